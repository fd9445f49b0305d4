"""Models by hub id: resolved through the Hugging Face cache (here a cache laid out on disk, the
hub being out of reach), loaded like any HF directory."""

import shutil

import numpy as np
import pytest
from conftest import torch_logits

from srit_jax.conversion import loading


def test_hub_ids_are_recognised():
  assert loading.is_hub_id("meta-llama/Llama-2-7b-hf")
  assert loading.is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct@main")
  assert not loading.is_hub_id("smollm2-135m-instruct")
  assert not loading.is_hub_id("/abs/path/model")
  assert not loading.is_hub_id("model.gguf")


def test_a_hub_model_loads_from_the_hub_cache(hf_model_dir, tmp_path, monkeypatch):
  import huggingface_hub.constants as hub_constants

  directory, torch_model = hf_model_dir("llama")
  cache = tmp_path / "hub"
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = cache / "models--someone--tiny-llama"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  shutil.copytree(directory, repo / "snapshots" / commit)
  monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

  model = loading.load_model("someone/tiny-llama")
  tokens = np.array([[1, 5, 9, 17, 33]])
  np.testing.assert_allclose(np.asarray(model.logits(tokens)), torch_logits(torch_model, tokens), atol=1e-4)
  with pytest.raises(FileNotFoundError, match="someone/not-there: could not be had from the Hugging Face hub"):
    loading.load_model("someone/not-there")
