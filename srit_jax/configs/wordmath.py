"""The built-in word problems at a size that can show what self-refinement adds (about two hours
on a 2-core CPU): the base recipe of docs/self_refinement_study.md.

    srit-jax pipeline --config=configs/wordmath.py --workdir=runs/wordmath

Student: SmolLM2-135M-Instruct. Teacher: the generator's own worked solutions (offline, always
correct). Taught on `wordmath` (8 problem kinds); evaluated on 1,000 new `wordmath` questions
(in-domain), on 500 of `wordmath_ood` (problem kinds and phrasings no training example uses) and
500 of `wordmath_hard` (three- and four-step chains), each stage against the one before it on
the same questions: enough to see a difference of about 3 points in-domain.
"""

from srit_jax.configs import pipeline, variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = pipeline.get_config()
  config.train_task = "wordmath"
  config.in_domain_tasks = "wordmath"
  config.out_domain_tasks = "wordmath_ood,wordmath_hard"

  config.demos.teacher.kind = "reference"
  config.demos.limit = 400  # demonstrations: the first 400 training questions

  config.sft.update(max_length=192, batch_size=8, num_steps=50, save_every=25)
  config.sft.optimizer.update(learning_rate=1e-4, warmup_steps=5)

  config.refine.update(
    limit=200,  # training questions the student answers (among those it was taught on)
    num_cot_samples=4,
    num_direct_samples=1,
    temperature=0.7,
    max_new_tokens=128,
    max_new_tokens_direct=16,
    generate_batch_size=64,
    max_length=224,
    batch_size=8,
    num_steps=20,
    save_every=10,
    eval_every=5,
    heldout_fraction=0.15,
    teacher_fallback=True,
  )
  config.refine.optimizer.update(learning_rate=5e-6, warmup_steps=2)

  config.eval.update(limit=1000, max_new_tokens=128, batch_size=64, direct=False)
  return config
