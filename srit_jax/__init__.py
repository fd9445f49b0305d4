"""srit_jax: Self-Refine Instruction-Tuning in JAX/Flax.

The names below are imported on first use, so that the command line and the config files
start without loading JAX.
"""

import importlib

_EXPORTS = {
  "fetch_model": "srit_jax.conversion.fetch",
  "CheckpointError": "srit_jax.conversion.hf_checkpoint",
  "load_hf_checkpoint": "srit_jax.conversion.hf_checkpoint",
  "save_hf_checkpoint": "srit_jax.conversion.hf_checkpoint",
  "LoadedModel": "srit_jax.conversion.loading",
  "load_model": "srit_jax.conversion.loading",
  "PRESETS": "srit_jax.model.presets",
  "ModelConfig": "srit_jax.model.config",
  "UnsupportedModelError": "srit_jax.model.config",
  "get_preset": "srit_jax.model.presets",
  "KVCache": "srit_jax.model.decoder",
  "Transformer": "srit_jax.model.decoder",
  "forward": "srit_jax.model.decoder",
  "init_cache": "srit_jax.model.decoder",
  "init_params": "srit_jax.model.decoder",
  "MeshConfig": "srit_jax.sharding",
  "make_mesh": "srit_jax.sharding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'srit_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(list(globals()) + __all__)
