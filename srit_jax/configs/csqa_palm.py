"""CommonsenseQA taught by PaLM 540B (out-family for SmolLM2), on real data.

    srit-jax pipeline --config=configs/csqa_palm.py --config.data_root=../shared/data --workdir=runs/csqa_palm
    srit-jax pipeline --config=configs/csqa_palm.py:cross --config.data_root=../shared/data --workdir=runs/cross
    srit-jax pipeline --config=configs/csqa_palm.py:full --config.data_root=../shared/data --workdir=runs/csqa_full

Demonstrations: PaLM 540B's few-shot CoT rationales for CSQA train (distilling-step-by-step),
the correct ones. In-domain: CSQA dev. Out-domain: OBQA, PIQA, SIQA, ARC-Challenge. Sized to
run on a 2-core CPU in about an hour; raise the limits on a TPU.

`cross`: the paper's cross self-refinement — instruction-tuned on CSQA, self-refined on OBQA's
training questions (scored by their gold answers; no teacher answers them), in-domain CSQA and
OBQA, out-domain PIQA, SIQA, ARC-Challenge.

`full`: the paper's setting on whole test sets (every CSQA dev question in-domain; every OBQA
and ARC-Challenge test question out of domain) with the recipe docs/self_refinement_study.md
found best against SFT: the paper's pairs (a correct CoT answer over a direct one, PaLM's
rationale as chosen where the student has none) + a length-normalised NLL term on the chosen
side, on 300 demonstrated questions, two epochs over the pairs, the step of lowest held-out loss
kept; and beside it the compute-matched control (the same steps on the same chosen answers,
cross-entropy only). About 3 hours on a 2-core CPU: docs/csqa_palm.md.
"""

import ml_collections

from srit_jax.configs import pipeline, variants

VARIANTS = (("", "cross", "full"),)


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
  if variant == "full":
    config.out_domain_tasks = "obqa,arc_challenge"
    config.eval.update(limit=0, batch_size=64)  # every question of each test split
    config.sft.update(num_steps=80, save_every=20)  # about 1.5 passes over the ~600 demonstrations
    config.refine.update(
      questions="demos",  # the taught questions: PaLM's rationale is there where no sample is right
      limit=300,
      nll_weight=1.0,
      max_pairs_per_question=8,
      num_epochs=2,
      eval_every=25,
      save_every=25,
      select_checkpoint="best_heldout",
      heldout_fraction=0.15,
    )
    config.control = True
  return config
