"""CommonsenseQA taught by PaLM 540B (out-family for SmolLM2), on real data.

    srit-jax pipeline --config=configs/csqa_palm.py --config.data_root=../shared/data --workdir=runs/csqa_palm
    srit-jax pipeline --config=configs/csqa_palm.py:cross --config.data_root=../shared/data --workdir=runs/cross

Demonstrations: PaLM 540B's few-shot CoT rationales for CSQA train (distilling-step-by-step),
the correct ones. In-domain: CSQA dev. Out-domain: OBQA, PIQA, SIQA, ARC-Challenge. Sized to
run on a 2-core CPU in about an hour; raise the limits on a TPU.

`cross`: the paper's cross self-refinement — instruction-tuned on CSQA, self-refined on OBQA's
training questions (scored by their gold answers; no teacher answers them), in-domain CSQA and
OBQA, out-domain PIQA, SIQA, ARC-Challenge.
"""

import ml_collections

from srit_jax.configs import pipeline, variants

VARIANTS = (("", "cross"),)


def get_config(variant: str = ""):
  (variant,) = variants(variant, __file__, *VARIANTS)
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
  if variant == "cross":
    config.refine_task = "obqa"
    config.in_domain_tasks = "csqa,obqa"
    config.out_domain_tasks = "piqa,siqa,arc_challenge"
    config.refine.teacher_fallback = False  # no teacher answered OBQA's questions
  return config
