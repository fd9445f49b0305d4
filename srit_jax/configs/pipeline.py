"""The whole method: demos → sft → refine → eval (untuned, SFT and self-refined students).

    srit-jax pipeline --config=configs/pipeline.py --workdir=runs/pipeline

Phase blocks are the phase commands' own configs (configs/demos.py, sft.py, refine.py,
eval.py); the pipeline fills in what links them (the student, the demonstrations file, the
SFT export). Other pipeline configs (configs/demo.py, configs/csqa_palm.py, ...) start from
this one. Rerun with the same --workdir: finished phases are skipped, changed ones rerun.
"""

import ml_collections

from srit_jax.configs import load, variants


def phase_config(name: str):
  """configs/<name>.py's config, so that each phase's fields are defined in one place."""
  return load(name)


VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.student = "smollm2-135m-instruct"  # known name, HF directory or .gguf file
  config.student_family = ""  # empty: guessed from the student's name
  config.train_task = "arith"  # the task whose training split is taught
  config.refine_task = ""  # the task self-refinement samples (empty: train_task; another: cross self-refinement)
  config.in_domain_tasks = "arith"  # comma-separated; evaluated on their evaluation splits (empty: the refine task)
  config.out_domain_tasks = "arith_hard"
  config.data_dir = ""  # folder of local benchmark files (empty: built-in tasks or the hub)
  config.source = "auto"  # auto | local | hub | tfds
  config.seed = 0
  config.demos = phase_config("demos")  # teacher and filtering (its task is train_task)
  config.sft = phase_config("sft")
  config.refine = phase_config("refine")
  config.refine_iterations = 1  # rounds of sample -> pairs -> DPO, each from the policy the last one left
  config.refine_reference = "sft"  # the reference of every round: sft (the SFT student) | previous (its own start)
  config.control = False  # also train the compute-matched control (cross-entropy on the same chosen answers)
  # The control's exported step: empty as refine.select_checkpoint, or last | best_heldout. Its
  # held-out loss is the chosen answers' NLL alone, which can stay flat where the preference's
  # falls, so best_heldout may keep step 0 (the SFT student); last matches the steps kept too.
  config.control_select_checkpoint = ""
  config.eval_rounds = False  # evaluate every round's student in-domain (a learning curve over rounds)
  config.eval_untuned = True  # evaluate the untuned student too (off where another run of it has: a study's variants)
  config.eval = phase_config("eval")  # generation settings and the per-task limit (tasks come from above)
  # Comma-separated workdirs of other runs, or folders of them (a study's root): a phase done
  # there with the same inputs (its fingerprint) is taken over as hard links, not run again; a
  # refine round that runs takes over their samples and reference log-probs of the same inputs.
  config.reuse_phases_from = ""
  return config


def size_for_a_cpu_hour(config, *, max_new_tokens: int) -> None:
  """Phase sizes of the real-data configs (csqa_palm.py, svamp_palm.py): about an hour on a
  2-core CPU for SmolLM2-135M. Raise the limits and steps on a TPU."""
  config.sft.update(max_length=256, batch_size=8, num_steps=40, save_every=20)
  config.sft.optimizer.update(learning_rate=5e-5, warmup_steps=5)
  config.refine.update(
    limit=64,
    num_cot_samples=4,
    num_direct_samples=1,
    max_new_tokens=max_new_tokens,
    max_new_tokens_direct=12,
    generate_batch_size=64,
    max_length=256,
    batch_size=8,
    num_steps=16,
    save_every=8,
    eval_every=4,
    heldout_fraction=0.2,
    teacher_fallback=True,
  )
  config.refine.optimizer.update(learning_rate=5e-6, warmup_steps=2)
  config.eval.update(limit=60, max_new_tokens=max_new_tokens, batch_size=60)
