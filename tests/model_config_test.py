"""ModelConfig: Hugging Face config.json in and out, presets, and clear errors."""

import dataclasses

import pytest

from srit_jax.conversion import hf_config
from srit_jax.model.config import RopeScaling, UnsupportedModelError
from srit_jax.model.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_config(name):
  config = PRESETS[name]
  assert hf_config.read(hf_config.config_json(config)) == config


def test_transformers_5_rope_parameters_are_read():
  hf = hf_config.config_json(get_preset("llama3.2-1b"))
  rope = dict(hf.pop("rope_scaling"), rope_theta=hf.pop("rope_theta"))
  hf["rope_parameters"] = rope
  config = hf_config.read(hf)
  assert config.rope_theta == 500_000.0
  assert config.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)


def test_qwen2_has_qkv_bias_and_mistral_keeps_its_window():
  assert hf_config.read(hf_config.config_json(PRESETS["qwen2.5-0.5b"])).qkv_bias
  assert hf_config.read(hf_config.config_json(PRESETS["mistral-7b"])).sliding_window == 4096


@pytest.mark.parametrize(
  "change, message",
  [
    ({"model_type": "gpt_neox"}, "field 'model_type' is 'gpt_neox'"),
    ({"hidden_act": "gelu"}, "field 'hidden_act' is 'gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'rope_scaling' has type 'yarn'"),
    ({"attention_bias": True}, "field 'attention_bias' is true"),
  ],
)
def test_unsupported_features_are_refused(change, message):
  hf = dict(hf_config.config_json(PRESETS["llama2-7b"]), **change)
  with pytest.raises(UnsupportedModelError, match=message):
    hf_config.read(hf)


@pytest.mark.parametrize(
  "preset, change, message",
  [
    ("gemma-2-2b", {"hidden_activation": "relu"}, "field 'hidden_activation' is 'relu'"),
    ("gemma-2-2b", {"attn_logit_softcapping": -1}, "field 'attn_logit_softcapping' is -1"),
    ("gemma-3-1b", {"layer_types": ["sliding_attention"]}, "field 'layer_types' must list 26"),
    ("gemma-3-1b", {"use_bidirectional_attention": True}, "field 'use_bidirectional_attention'"),
    ("qwen3-0.6b", {"attention_bias": True}, "field 'attention_bias' is true"),
    ("phi-3-mini", {"partial_rotary_factor": 0.75}, "field 'partial_rotary_factor'"),
    ("phi-3-mini", {"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "'rope_scaling' has type 'longrope'"),
  ],
)
def test_new_families_refuse_what_they_do_not_implement_by_field(preset, change, message):
  hf = dict(hf_config.config_json(PRESETS[preset]), **change)
  with pytest.raises(UnsupportedModelError, match=message):
    hf_config.read(hf)


@pytest.mark.parametrize(
  "name", ["gemma-2-2b", "gemma-2-9b", "gemma-3-1b", "gemma-3-4b", "qwen3-0.6b", "qwen3-8b", "phi-3-mini"]
)
def test_new_presets_survive_their_config_json(name):
  assert hf_config.read(hf_config.config_json(PRESETS[name])) == PRESETS[name]


def test_gemma3_text_config_reads_flat_and_nested_rope_settings():
  nested = hf_config.config_json(PRESETS["gemma-3-4b"])
  flat = {k: v for k, v in nested.items() if k != "rope_parameters"}
  flat.update(
    rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling={"rope_type": "linear", "factor": 8.0}
  )
  del flat["layer_types"]
  flat["sliding_window_pattern"] = 6  # configs before transformers listed layer types
  assert hf_config.read(flat) == hf_config.read(nested) == PRESETS["gemma-3-4b"]
  multimodal = {"model_type": "gemma3", "text_config": {k: v for k, v in nested.items() if k != "model_type"}}
  assert hf_config.read(multimodal) == PRESETS["gemma-3-4b"]


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match="remat_policy"):
    dataclasses.replace(PRESETS["smollm2-135m"], remat_policy="sometimes")
  with pytest.raises(ValueError, match="not a multiple"):
    dataclasses.replace(PRESETS["smollm2-135m"], num_kv_heads=4)
  with pytest.raises(KeyError, match="unknown model preset"):
    get_preset("gpt-5")
  with pytest.raises(ValueError, match="layer_types has 3 entries for 26 layers"):
    dataclasses.replace(PRESETS["gemma-3-1b"], layer_types=("full_attention",) * 3)
  with pytest.raises(ValueError, match="hidden_activation 'relu'"):
    dataclasses.replace(PRESETS["gemma-2-2b"], hidden_activation="relu")
