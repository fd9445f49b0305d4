"""srit_jax: Self-Refine Instruction-Tuning in JAX/Flax."""

from srit_jax.conversion.fetch import fetch_model
from srit_jax.conversion.hf_checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from srit_jax.conversion.loading import LoadedModel, load_model
from srit_jax.model.config import PRESETS, ModelConfig, UnsupportedModelError, get_preset
from srit_jax.model.decoder import KVCache, Transformer, forward, init_cache, init_params
from srit_jax.sharding import MeshConfig, make_mesh

__all__ = [
  "PRESETS",
  "CheckpointError",
  "KVCache",
  "LoadedModel",
  "MeshConfig",
  "ModelConfig",
  "Transformer",
  "UnsupportedModelError",
  "fetch_model",
  "forward",
  "get_preset",
  "init_cache",
  "init_params",
  "load_hf_checkpoint",
  "load_model",
  "make_mesh",
  "save_hf_checkpoint",
]
