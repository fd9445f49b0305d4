"""Builds tests/testdata/tiny_tokenizer: a byte-level BPE of 512 tokens with a ChatML template.

    python tests/testdata/build_tiny_tokenizer.py

Offline and deterministic: trained on the task prompts and worked solutions the project writes
itself. Its special tokens sit where SmolLM2's do (0 <|endoftext|>, 1 <|im_start|>,
2 <|im_end|>) and digits are split one by one as in SmolLM2, so that tests of everything but
the real model's weights run on tiny models with a real tokenizer and chat template.
"""

import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from srit_jax.tasks import prompts, synthetic

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
  "{% for message in messages %}"
  "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
  "{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus() -> list[str]:
  texts = []
  for task in ("arith", "arith_hard"):
    for example in synthetic.generate(task, "train", size=300):
      texts += [prompts.prompt(example, prompts.COT), prompts.prompt(example, prompts.DIRECT), example.solution]
  texts.append("Choose the answer to the following question from the options A, B, C, D, E. Choices: (A) (B)")
  return texts


def build(out_dir: pathlib.Path) -> None:
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
  )
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=VOCAB_SIZE,
    special_tokens=SPECIAL_TOKENS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(corpus(), trainer)
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tokenizer,
    bos_token="<|im_start|>",
    eos_token="<|im_end|>",
    pad_token="<|im_end|>",
    unk_token="<|endoftext|>",
  )
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(str(out_dir))


if __name__ == "__main__":
  build(pathlib.Path(__file__).with_name("tiny_tokenizer"))
