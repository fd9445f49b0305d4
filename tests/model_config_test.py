"""ModelConfig: Hugging Face config.json in and out, presets, and clear errors."""

import dataclasses

import pytest

from srit_jax.model.config import PRESETS, ModelConfig, RopeScaling, UnsupportedModelError, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_config(name):
  config = PRESETS[name]
  assert ModelConfig.from_hf_config(config.to_hf_config()) == config


def test_transformers_5_rope_parameters_are_read():
  hf = get_preset("llama3.2-1b").to_hf_config()
  rope = dict(hf.pop("rope_scaling"), rope_theta=hf.pop("rope_theta"))
  hf["rope_parameters"] = rope
  config = ModelConfig.from_hf_config(hf)
  assert config.rope_theta == 500_000.0
  assert config.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)


def test_qwen2_has_qkv_bias_and_mistral_keeps_its_window():
  assert ModelConfig.from_hf_config(PRESETS["qwen2.5-0.5b"].to_hf_config()).qkv_bias
  assert ModelConfig.from_hf_config(PRESETS["mistral-7b"].to_hf_config()).sliding_window == 4096


@pytest.mark.parametrize(
  "change, message",
  [
    ({"model_type": "gemma2"}, "field 'model_type' is 'gemma2'"),
    ({"hidden_act": "gelu"}, "field 'hidden_act' is 'gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'rope_scaling' has type 'yarn'"),
    ({"attention_bias": True}, "field 'attention_bias' is true"),
  ],
)
def test_unsupported_features_are_refused(change, message):
  hf = dict(PRESETS["llama2-7b"].to_hf_config(), **change)
  with pytest.raises(UnsupportedModelError, match=message):
    ModelConfig.from_hf_config(hf)


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match="remat_policy"):
    dataclasses.replace(PRESETS["smollm2-135m"], remat_policy="sometimes")
  with pytest.raises(ValueError, match="not a multiple"):
    dataclasses.replace(PRESETS["smollm2-135m"], num_kv_heads=4)
  with pytest.raises(KeyError, match="unknown model preset"):
    get_preset("gpt-5")
