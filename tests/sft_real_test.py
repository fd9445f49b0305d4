"""Real weights: SmolLM2-135M-Instruct instruction-tuned on 4 real teacher demonstrations
(ChatGPT chain-of-thought for math word problems) overfits them."""

import json

import jax
import pytest
from conftest import TEACHER_MATH_FILE, load_config

from srit_jax.conversion import loading
from srit_jax.generation import batched as generation
from srit_jax.generation import jsonl
from srit_jax.phases import sft as sft_loop

pytestmark = pytest.mark.slow  # the real SmolLM2 weights


@pytest.mark.long  # 3 minutes; QLoRA on SmolLM2 learning is quicker
def test_smollm2_overfits_4_teacher_demonstrations(smollm2_dir, optimized_programs, tmp_path):
  with open(TEACHER_MATH_FILE, encoding="utf-8") as f:
    demos = json.load(f)[:200]
  # The 4 shortest (91-106 tokens each), packed two to a row, keep the test to a few CPU minutes:
  # every step trains on all of them (448 tokens, about 0.35 TFLOP).
  demos = sorted(demos, key=lambda d: len(d["instruction"]) + len(d["output"]))[:4]
  train_file = tmp_path / "demos.jsonl"
  train_file.write_text(
    "".join(json.dumps({"instruction": d["instruction"], "output": d["output"].strip()}) + "\n" for d in demos)
  )
  config = load_config("sft")
  config.update(
    model=str(smollm2_dir),
    train_file=str(train_file),
    max_length=224,
    batch_size=2,
    num_steps=8,  # losses 1.03, 1.09, 0.47, 0.18, 0.11, 0.055, 0.024, 0.014 (6 steps at 6e-4 spiked to 1.26)
    save_every=1000,
    export=False,
  )
  config.mesh.update(data=1, fsdp=1, tensor=1)  # one device: sharded steps are checked against it elsewhere
  config.optimizer.update(learning_rate=4e-4, warmup_steps=0)  # cosine to a tenth: the last steps settle
  result = sft_loop.train(config, tmp_path / "run")
  losses = [json.loads(line)["loss"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  assert losses[0] > 0.5 and losses[-1] < 0.05, losses

  model = loading.load_model(smollm2_dir)
  prompts = [jsonl.encode_prompt(model.tokenizer, {"prompt": d["instruction"]}, True, "demo") for d in demos]
  trained = jax.device_get(result.state.params)
  outputs = generation.generate(model.config, trained, prompts, max_new_tokens=96, tokenizer=model.tokenizer)
  for demo, output in zip(demos, outputs):
    assert output.text.strip() == demo["output"].strip()
    assert output.stop_reason == "eos"
