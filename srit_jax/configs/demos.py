"""Teacher demonstrations for instruction tuning.

    srit-jax demos --config=configs/demos.py --workdir=runs/demos                  # built-in task, reference teacher
    srit-jax demos --config=configs/demos.py:palm_csqa --config.teacher.path=DATA/teachers/palm540b_cqa --workdir=...
    srit-jax demos --config=configs/demos.py:local --config.task=gsm8k --config.data_dir=DATA/benchmarks --workdir=...
    srit-jax demos --config=configs/demos.py:openai --config.teacher.base_url=http://localhost:8000/v1 \\
        --config.teacher.model=meta-llama/Llama-2-70b-chat-hf --workdir=...

Writes WORKDIR/demos.jsonl (the SFT phase's train_file), all_answers.jsonl and summary.json;
with heldout_questions, heldout.jsonl (the demonstrations of the questions after `limit`, which
never train: the pipeline's SFT measures its held-out loss on them).
"""

import ml_collections

from srit_jax.configs import variants

KEEP = ("correct", "all", "first_correct")  # which demonstrations the demos phase keeps


def teacher_config(kind: str = "reference"):
  teacher = ml_collections.ConfigDict()
  teacher.kind = kind  # local | openai | precomputed | reference (the dataset's own worked solutions)
  teacher.family = ""  # model family for in-/out-family labels; empty: guessed from the model name
  # local and openai
  teacher.model = "smollm2-135m-instruct"  # local: known name, HF directory or .gguf; openai: the served model
  teacher.max_new_tokens = 256  # tokens per answer at most
  teacher.temperature = 0.7  # 0 = greedy
  teacher.top_k = 0  # local: 0 = off
  teacher.top_p = 0.95  # local: 1 = off
  teacher.seed = 0  # sample seeds derive from it
  teacher.batch_size = 16  # local: rows per generation batch
  teacher.dtype = "float32"  # local: compute dtype
  # openai
  teacher.base_url = "http://localhost:8000/v1"  # an OpenAI-compatible server (vLLM, TGI, OpenAI)
  teacher.api_key_env = "OPENAI_API_KEY"  # environment variable holding the key (never saved)
  teacher.concurrency = 8  # requests in flight
  teacher.max_retries = 6  # per answer, on 429 / 5xx / timeouts
  teacher.timeout_s = 120.0  # per request
  # precomputed
  teacher.reader = "palm_csqa"  # palm_csqa | palm_svamp | davinci_zero_shot_cot | gpt3_gsm8k | chatgpt_math
  teacher.path = ""  # the reader's folder (PaLM) or file (others)
  teacher.split = "train"  # PaLM files: train or test
  return teacher


# Variants: a teacher kind, or a precomputed reader (whose task it sets).
_READERS = {
  "palm_csqa": "csqa",
  "palm_svamp": "svamp",
  "davinci_zero_shot_cot": "",
  "gpt3_gsm8k": "gsm8k",
  "chatgpt_math": "",
}
_KINDS = {"": "reference", "reference": "reference", "local": "local", "openai": "openai"} | {
  reader: "precomputed" for reader in _READERS
}
VARIANTS = (tuple(_KINDS),)  # a teacher kind, or a precomputed reader (whose task it sets)


def get_config(variant: str = ""):
  (variant,) = variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.task = "arith"  # a task of srit_jax.tasks.TASKS; a precomputed teacher brings its own questions
  config.split = ""  # empty: the task's training split
  config.source = "auto"  # auto | local | hub | tfds
  config.data_dir = ""  # folder of local benchmark files (layout of ../shared/data/benchmarks)
  config.hub_path = ""  # replaces the hub dataset id (a mirror or local copy)
  config.limit = 0  # questions at most; 0 = all
  config.heldout_questions = 0  # > 0: the teacher also answers this many questions after `limit`: heldout.jsonl
  config.seed = 0  # synthetic tasks: which problems
  config.num_samples = 1  # teacher answers per question
  config.keep = "correct"  # correct | all | first_correct
  config.teacher = teacher_config(_KINDS[variant])
  if variant in _READERS:
    config.teacher.reader = variant
    config.task = _READERS[variant]
  return config
