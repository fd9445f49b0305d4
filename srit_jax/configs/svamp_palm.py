"""SVAMP taught by PaLM 540B (out-family for SmolLM2), on real data.

    srit-jax pipeline --config=configs/svamp_palm.py --config.data_root=../shared/data --workdir=runs/svamp_palm

Demonstrations: PaLM 540B's CoT for the 800 SVAMP training questions (its expression answers
evaluated to numbers), the correct ones; self-refinement samples the same questions.
In-domain: the SVAMP questions left after removing those 800. Out-domain: MultiArith, AddSub,
SingleEq, GSM8K.
"""

import ml_collections

from srit_jax.configs import pipeline, variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = pipeline.get_config()

  root = ml_collections.FieldReference("../shared/data")
  config.data_root = root  # the folder holding benchmarks/ and teachers/ (see its MANIFEST.md)
  config.data_dir = root + "/benchmarks"
  config.train_task = "svamp"
  config.in_domain_tasks = "svamp"
  config.out_domain_tasks = "multiarith,addsub,singleeq,gsm8k"

  config.demos.teacher.kind = "precomputed"
  config.demos.teacher.reader = "palm_svamp"
  config.demos.teacher.path = root + "/teachers/palm540b_svamp"

  pipeline.size_for_a_cpu_hour(config, max_new_tokens=128)
  config.refine.questions = "demos"  # SVAMP has no training split of its own: the teacher's questions
  return config
