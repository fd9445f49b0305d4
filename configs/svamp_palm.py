"""SVAMP taught by PaLM 540B (out-family for SmolLM2), on real data.

    srit-jax pipeline --config=configs/svamp_palm.py --config.data_root=../shared/data --workdir=runs/svamp_palm

Demonstrations: PaLM 540B's CoT for the 800 SVAMP training questions (its expression answers
evaluated to numbers), the correct ones; self-refinement samples the same questions.
In-domain: the SVAMP questions left after removing those 800. Out-domain: MultiArith, AddSub,
SingleEq, GSM8K.
"""

import importlib.util
import pathlib

import ml_collections


def get_config():
  spec = importlib.util.spec_from_file_location("pipeline_config", pathlib.Path(__file__).with_name("pipeline.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()

  root = ml_collections.FieldReference("../shared/data")
  config.data_root = root  # the folder holding benchmarks/ and teachers/ (see its MANIFEST.md)
  config.data_dir = root + "/benchmarks"
  config.train_task = "svamp"
  config.in_domain_tasks = "svamp"
  config.out_domain_tasks = "multiarith,addsub,singleeq,gsm8k"

  config.demos.teacher.kind = "precomputed"
  config.demos.teacher.reader = "palm_svamp"
  config.demos.teacher.path = root + "/teachers/palm540b_svamp"

  config.sft.max_length = 256
  config.sft.batch_size = 8
  config.sft.num_steps = 60
  config.sft.save_every = 20
  config.sft.optimizer.learning_rate = 5e-5
  config.sft.optimizer.warmup_steps = 5

  config.refine.questions = "demos"  # SVAMP has no training split of its own: the teacher's questions
  config.refine.limit = 96
  config.refine.num_cot_samples = 4
  config.refine.max_new_tokens = 128
  config.refine.generate_batch_size = 64
  config.refine.max_length = 256
  config.refine.batch_size = 8
  config.refine.num_steps = 24
  config.refine.save_every = 12
  config.refine.eval_every = 6
  config.refine.heldout_fraction = 0.2
  config.refine.teacher_fallback = True
  config.refine.optimizer.learning_rate = 5e-6
  config.refine.optimizer.warmup_steps = 2

  config.eval.limit = 150
  config.eval.max_new_tokens = 128
  config.eval.batch_size = 50
  return config
