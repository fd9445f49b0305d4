"""CommonsenseQA taught by PaLM 540B (out-family for SmolLM2), on real data.

    srit-jax pipeline --config=configs/csqa_palm.py --config.data_root=../shared/data --workdir=runs/csqa_palm

Demonstrations: PaLM 540B's few-shot CoT rationales for CSQA train (distilling-step-by-step),
the correct ones. In-domain: CSQA dev. Out-domain: OBQA, PIQA, SIQA, ARC-Challenge. Sized to
run on a 2-core CPU in about an hour; raise the limits on a TPU.
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
  config.train_task = "csqa"
  config.in_domain_tasks = "csqa"
  config.out_domain_tasks = "obqa,piqa,siqa,arc_challenge"

  config.demos.teacher.kind = "precomputed"
  config.demos.teacher.reader = "palm_csqa"
  config.demos.teacher.path = root + "/teachers/palm540b_cqa"
  config.demos.limit = 800  # questions (about 600 correct demonstrations)

  pipeline.size_for_a_cpu_hour(config, max_new_tokens=96)
  return config
