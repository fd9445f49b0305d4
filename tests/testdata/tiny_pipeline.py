"""The whole pipeline at tiny sizes, for tests (set the student with --config.student=DIR).

srit-jax pipeline --config=tests/testdata/tiny_pipeline.py --config.student=DIR --workdir=RUN
"""

from srit_jax.configs import pipeline, variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = pipeline.get_config()
  config.demos.limit = 24
  config.sft.update(max_length=128, batch_size=4, num_steps=3, save_every=3)
  config.sft.optimizer.update(warmup_steps=0, learning_rate=1e-3)
  config.refine.update(
    limit=12,
    num_cot_samples=2,
    max_new_tokens=16,
    max_new_tokens_direct=6,
    generate_batch_size=8,
    max_length=128,
    batch_size=2,
    num_steps=4,
    save_every=2,
    eval_every=0,
    heldout_fraction=0.3,
    teacher_fallback=True,
  )
  config.refine.optimizer.update(warmup_steps=0)
  config.eval.update(limit=4, max_new_tokens=12, batch_size=4, direct=True)
  for block in (config.sft, config.refine, config.eval):
    block.mesh.update(data=1, fsdp=2, tensor=1)
  return config
