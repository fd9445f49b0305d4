"""The README's main job: the whole method on a 2-core CPU in about ten minutes, offline.

    srit-jax pipeline --config=configs/demo.py --workdir=runs/demo

Student: SmolLM2-135M-Instruct, fetched from PyPI. Task: the built-in multi-step arithmetic
word problems (`arith`), taught from its training split; evaluated on held-out `arith` test
questions (in-domain) and on the harder `arith_hard` (out-of-domain: more steps, division).
Teacher: the task's own worked solutions (offline, always correct). The table it prints shows
what each stage does to CoT accuracy, with 95% intervals, on questions no phase trained on.
"""

from srit_jax.configs import pipeline, variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = pipeline.get_config()

  config.demos.teacher.kind = "reference"
  config.demos.limit = 200  # demonstrations written (SFT sees about half of them)

  # Memory: the README promises a 4 GB machine. Layers recomputed in the backward pass and
  # checkpoints saved in the step (no second copy of the state while training goes on).
  for block in (config.sft, config.refine):
    block.remat_policy = "full"
    block.async_checkpoints = False

  config.sft.max_length = 160
  config.sft.batch_size = 4
  config.sft.num_steps = 24
  config.sft.save_every = 12
  config.sft.optimizer.learning_rate = 1e-4
  config.sft.optimizer.warmup_steps = 2

  config.refine.limit = 24  # questions the student samples
  config.refine.num_cot_samples = 2
  config.refine.num_direct_samples = 1
  config.refine.max_new_tokens = 96
  config.refine.max_new_tokens_direct = 12
  config.refine.generate_batch_size = 48
  config.refine.max_length = 160
  config.refine.batch_size = 4
  config.refine.num_steps = 6
  config.refine.save_every = 6
  config.refine.eval_every = 0
  config.refine.heldout_fraction = 0.25
  config.refine.teacher_fallback = True  # questions the student never solves take the teacher's answer
  config.refine.optimizer.learning_rate = 5e-6
  config.refine.optimizer.warmup_steps = 0

  config.eval.limit = 30  # test questions per task
  config.eval.max_new_tokens = 96
  config.eval.batch_size = 30
  return config
