"""Checkpoint conversion: export round trip, sharded indexes, GGUF, and errors on bad input."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_hf_model, torch_logits

from srit_jax.conversion import gguf_checkpoint, hf_checkpoint, hf_config
from srit_jax.model import decoder as model_lib
from srit_jax.model.config import UnsupportedModelError

TOKENS = np.random.default_rng(0).integers(3, 128, size=(2, 11)).astype(np.int32)


def _logits(config, params):
  return np.asarray(model_lib.forward(config, params, jnp.asarray(TOKENS)))


@pytest.mark.parametrize("family", ["qwen2_bias", "tied_gqa", "gemma2", "gemma3", "qwen3", "phi3"])
def test_export_round_trip_loads_in_transformers(hf_model_dir, tmp_path, family):
  import transformers

  directory, _ = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  exported = hf_checkpoint.save_hf_checkpoint(params, config, tmp_path / "exported")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()
  np.testing.assert_allclose(torch_logits(reloaded, TOKENS), _logits(config, params), atol=1e-4, rtol=0)
  config2, params2 = hf_checkpoint.load_hf_checkpoint(exported)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_phi3_fused_tensors_split_on_load_and_fuse_back_bit_exactly(hf_model_dir, tmp_path):
  import safetensors.numpy

  directory, _ = hf_model_dir("phi3")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  q = params["layers"]["attention"]["q_proj"]["kernel"]  # split: [L, D, N, H]
  assert q.shape == (config.num_layers, config.embed_dim, config.num_heads, config.head_dim)
  original = safetensors.numpy.load_file(directory / "model.safetensors")
  assert "model.layers.0.self_attn.qkv_proj.weight" in original
  for max_shard_bytes in (5 * 2**30, 30_000):  # one file, and fused tensors spread over shards
    exported = hf_checkpoint.save_hf_checkpoint(
      params, config, tmp_path / str(max_shard_bytes), max_shard_bytes=max_shard_bytes
    )
    again = {}
    for file in exported.glob("*.safetensors"):
      again.update(safetensors.numpy.load_file(file))
    assert sorted(again) == sorted(original)
    for name, tensor in original.items():
      np.testing.assert_array_equal(again[name], tensor, err_msg=name)


def test_a_fused_tensor_of_the_wrong_size_is_named(hf_model_dir, tmp_path):
  import safetensors.numpy

  directory, _ = hf_model_dir("phi3")
  tensors = safetensors.numpy.load_file(directory / "model.safetensors")
  name = "model.layers.1.self_attn.qkv_proj.weight"
  tensors[name] = tensors[name][:-4]
  safetensors.numpy.save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf_checkpoint.CheckpointError, match=f"fused tensor '{name}' has 92 rows, expected 96"):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_multimodal_gemma3_loads_its_language_model(hf_model_dir, tmp_path):
  import safetensors.numpy

  directory, torch_model = hf_model_dir("gemma3")
  text = json.loads((directory / "config.json").read_text())
  multimodal = tmp_path / "gemma3_multimodal"
  multimodal.mkdir()
  config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text}
  (multimodal / "config.json").write_text(json.dumps(config))
  tensors = {
    name.replace("model.", "model.language_model.", 1): t
    for name, t in safetensors.numpy.load_file(directory / "model.safetensors").items()
  }
  tensors["model.vision_tower.patch_embedding.weight"] = np.zeros((4, 3), np.float32)
  safetensors.numpy.save_file(tensors, str(multimodal / "model.safetensors"), metadata={"format": "pt"})
  config, params = hf_checkpoint.load_hf_checkpoint(multimodal)
  assert config.model_type == "gemma3_text"
  np.testing.assert_allclose(_logits(config, params), torch_logits(torch_model, TOKENS), atol=1e-4, rtol=0)


def test_sharded_checkpoint_with_index_loads_the_same(hf_model_dir, tmp_path):
  directory, _ = hf_model_dir("llama")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  sharded = hf_checkpoint.save_hf_checkpoint(params, config, tmp_path / "sharded", max_shard_bytes=40_000)
  index = json.loads((sharded / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  assert not (sharded / "model.safetensors").exists()
  _, params2 = hf_checkpoint.load_hf_checkpoint(sharded)
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_bfloat16_export_loads_in_transformers(hf_model_dir, tmp_path):
  import torch
  import transformers

  directory, _ = hf_model_dir("llama")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  exported = hf_checkpoint.save_hf_checkpoint(params, config, tmp_path / "bf16", dtype="bfloat16")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported)
  assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16


# --- GGUF -------------------------------------------------------------------------------------


def test_qk_unpermute_inverts_llama_cpp_permute():
  weight = np.arange(8 * 2 * 6 * 5, dtype=np.float32).reshape(8 * 2 * 6, 5)
  permuted = gguf_checkpoint.permute_qk(weight, num_heads=8)
  assert not np.array_equal(permuted, weight)
  np.testing.assert_array_equal(gguf_checkpoint.unpermute_qk(permuted, num_heads=8), weight)


def _write_gguf(torch_model, path, architecture="llama"):
  """Writes a float32 GGUF the way llama.cpp's converter does, q/k rows permuted for Llama."""
  import gguf

  cfg = torch_model.config
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_name("tiny")
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  writer.add_rope_dimension_count(cfg.head_dim)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("gpt2")
  tokens = [chr(ord("A") + i) if i < 26 else f"t{i}" for i in range(cfg.vocab_size)]
  tokens[26] = "DE"  # ids 1 and 2 ("B", "C") are bos and eos, so special
  writer.add_token_list(tokens)
  writer.add_token_types([1] * cfg.vocab_size)
  writer.add_token_merges(["D E"])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  inverse = {hf: g for g in _gguf_names(cfg.num_hidden_layers) if (hf := gguf_checkpoint.hf_name(g))}
  for name, param in torch_model.state_dict().items():
    array = param.float().numpy()
    if architecture == "llama" and ".q_proj." in name:
      array = gguf_checkpoint.permute_qk(array, cfg.num_attention_heads)
    elif architecture == "llama" and ".k_proj." in name:
      array = gguf_checkpoint.permute_qk(array, cfg.num_key_value_heads)
    writer.add_tensor(inverse[name], np.ascontiguousarray(array))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _gguf_names(num_layers):
  yield from ("token_embd.weight", "output_norm.weight", "output.weight")
  for i in range(num_layers):
    for part in (
      "attn_norm",
      "attn_q",
      "attn_k",
      "attn_v",
      "attn_q_norm",
      "attn_k_norm",
      "attn_output",
      "ffn_norm",
      "ffn_gate",
      "ffn_up",
      "ffn_down",
    ):
      yield f"blk.{i}.{part}.weight"


def test_gguf_with_permuted_qk_loads_to_transformers_logits(tmp_path):
  import torch
  import transformers

  torch_model = make_hf_model("llama")
  path = tmp_path / "tiny.gguf"
  _write_gguf(torch_model, path)
  config, params, tokenizer = gguf_checkpoint.load_gguf(path)
  assert config.num_kv_heads == 2 and not config.tie_embeddings
  np.testing.assert_allclose(_logits(config, params), torch_logits(torch_model, TOKENS), atol=1e-4, rtol=0)
  # transformers' own GGUF loader agrees with the file as written.
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
  ).eval()
  np.testing.assert_allclose(torch_logits(theirs, TOKENS), _logits(config, params), atol=1e-4, rtol=0)
  assert tokenizer.encode("DEF") == [26, 5]


def test_qwen3_gguf_with_qk_norms_loads_to_transformers_logits(tmp_path):
  torch_model = make_hf_model("qwen3")
  path = tmp_path / "tiny-qwen3.gguf"
  _write_gguf(torch_model, path, architecture="qwen3")
  config, params, _ = gguf_checkpoint.load_gguf(path)
  assert config.model_type == "qwen3" and config.qk_norm
  np.testing.assert_allclose(_logits(config, params), torch_logits(torch_model, TOKENS), atol=1e-4, rtol=0)


def test_gguf_that_is_not_gguf_is_an_error(tmp_path):
  path = tmp_path / "bad.gguf"
  path.write_bytes(b"GGUF" + b"\x00" * 20)
  with pytest.raises(hf_checkpoint.CheckpointError, match=r"bad\.gguf: not a readable GGUF file"):
    gguf_checkpoint.GgufFile(path)


# --- Bad input ----------------------------------------------------------------------------------


def _rewrite_tensors(directory, edit):
  from safetensors.numpy import load_file, save_file

  path = directory / "model.safetensors"
  tensors = load_file(str(path))
  edit(tensors)
  save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  _rewrite_tensors(directory, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(hf_checkpoint.CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_extra_tensor_is_named(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  _rewrite_tensors(directory, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": np.ones(12, np.float32)}))
  with pytest.raises(hf_checkpoint.CheckpointError, match=r"unused tensor.*'model\.layers\.0\.self_attn\.q_norm"):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_wrong_shape_is_named_with_both_shapes(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  _rewrite_tensors(directory, lambda t: t.update({"model.norm.weight": np.ones(47, np.float32)}))
  with pytest.raises(
    hf_checkpoint.CheckpointError,
    match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(47,\), expected \(48,\)",
  ):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_unsupported_architecture_names_file_and_field(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  config = json.loads((directory / "config.json").read_text())
  config.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(UnsupportedModelError, match=r"config\.json: field 'model_type' is 'gpt_neox'"):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_truncated_safetensors_names_the_file(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  path = directory / "model.safetensors"
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(hf_checkpoint.CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_config_that_is_not_json_names_the_file(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  (directory / "config.json").write_text('{"model_type": "llama",')
  with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
    hf_config.read(directory)


def test_missing_config_field_is_named(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  config = json.loads((directory / "config.json").read_text())
  del config["intermediate_size"]
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json: field 'intermediate_size' is missing"):
    hf_config.read(directory)


def test_pickle_checkpoints_are_never_read(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  (directory / "model.safetensors").unlink()
  (directory / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(hf_checkpoint.CheckpointError, match="pickle files, which are never read"):
    hf_checkpoint.load_hf_checkpoint(directory)


def test_index_naming_a_missing_shard_is_an_error(hf_model_dir, tmp_path):
  directory, _ = hf_model_dir("llama")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  sharded = hf_checkpoint.save_hf_checkpoint(params, config, tmp_path / "s", max_shard_bytes=40_000)
  victim = sorted(sharded.glob("model-*.safetensors"))[1]
  victim.unlink()
  with pytest.raises(hf_checkpoint.CheckpointError, match=f"{victim.name}: file is missing"):
    hf_checkpoint.load_hf_checkpoint(sharded)
  shutil.rmtree(sharded)
