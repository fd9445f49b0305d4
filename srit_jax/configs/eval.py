"""Greedy chain-of-thought accuracy of a model on benchmark tasks.

    srit-jax eval --config=configs/eval.py --workdir=runs/eval
    srit-jax eval --config=configs/eval.py --config.model=runs/sft/export \\
        --config.tasks=gsm8k,multiarith --config.data_dir=DATA/benchmarks --config.limit=200 --workdir=...

Writes WORKDIR/{task}.{style}.jsonl (prompt, generation, extracted answer, gold, correct),
summary.json and results.md (accuracy with 95% intervals). A rerun resumes. With
--config.sampled_answers=8, each question is also answered 8 times at --config.temperature:
pass@1, 2, 4, 8 and the majority vote's accuracy (self-consistency), in {task}.cot.sampled.jsonl
and the summary. --config.num_shots=8 shows 8 worked examples of each task's training split
before every question (earlier chat turns; CoT shows their worked solutions). With
--config.paired_with=OTHER (an earlier eval workdir, say of the model before training), each
task's answers are paired with OTHER's on the questions both answered: the difference with its
bootstrap interval and the exact McNemar test, in paired.json and results.md.
"""

import ml_collections

from srit_jax.configs import variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = "smollm2-135m-instruct"  # known name, HF directory or .gguf file
  config.dtype = "float32"  # compute dtype
  config.attention = "auto"  # auto (by platform) | xla | splash | blockwise | cudnn
  config.tasks = "arith,arith_hard"  # comma-separated tasks of srit_jax.tasks.TASKS
  config.split = ""  # empty: each task's evaluation split
  config.source = "auto"  # auto | local | hub | tfds
  config.data_dir = ""  # folder of local benchmark files
  config.limit = 0  # examples per task at most (the first ones); 0 = all
  config.seed = 0  # synthetic tasks: which problems
  config.direct = False  # also measure direct answers (no chain of thought)
  config.num_shots = 0  # worked examples of each task's training split before every question; 0 = zero-shot
  config.max_new_tokens = 256  # CoT answers
  config.max_new_tokens_direct = 32  # direct answers
  config.batch_size = 16  # rows per generation batch
  config.sampled_answers = 0  # also sample this many CoT answers a question: pass@k, majority vote; 0 = greedy only
  config.temperature = 0.7  # of the sampled answers
  config.top_p = 1.0  # of the sampled answers; 1 = off
  config.sampling_seed = 0  # of the sampled answers
  config.paired_with = ""  # an earlier eval workdir: this model's answers paired with its model's (paired.json)
  config.chat_template = True  # wrap prompts in the model's chat template
  config.stop_strings = ("\nQuestion:",)  # a model that starts a new question has finished
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # axis sizes; -1: the remaining devices
  return config
