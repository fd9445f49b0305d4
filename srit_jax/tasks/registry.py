"""The task registry: where each benchmark's examples come from (local files in the layout of
the sources, the Hugging Face hub, TFDS) and which split trains and which evaluates.

>>> examples = load_examples("gsm8k", "test", data_dir="data")            # local files
>>> examples = load_examples("csqa", "validation", source="hub")          # tau/commonsense_qa
>>> examples = load_examples("arith", "train")                           # built in, offline
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from srit_jax import io
from srit_jax.tasks import formats, synthetic, word_problems
from srit_jax.tasks.example import CHOICE, LATEX, NUMBER, Example
from srit_jax.tasks.rows import DataError, Row, read_csv_rows, read_rows

Converter = Callable[[str, Row, Any], Example]


@dataclasses.dataclass(frozen=True)
class HubSource:
  path: str  # dataset id on the hub
  name: str | None  # its config
  splits: dict[str, str]  # our split → the hub's split
  converter: Converter
  sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # our split → its rows, as the card publishes


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  answer_type: str
  domain: str  # "math" or "commonsense": what counts as in-domain for the other tasks
  eval_split: str
  train_split: str | None
  local: dict[str, tuple[str, Converter]] = dataclasses.field(default_factory=dict)  # split → (file, converter)
  hub: HubSource | None = None
  tfds: tuple[str, Converter] | None = None  # builder name, converter of its (decoded) rows
  generator: str = ""  # "synthetic" or "word_problems": written by the project, offline

  @property
  def synthetic(self) -> bool:
    return bool(self.generator)

  @property
  def splits(self) -> list[str]:
    if self.generator == "synthetic":
      return sorted(synthetic.SPLIT_SIZES)
    if self.generator == "word_problems":
      return sorted(word_problems.SPLIT_SIZES[self.name])
    return sorted(set(self.local) | set(self.hub.splits if self.hub else {}))


def _adapters(folder: str, splits: dict[str, str]) -> dict[str, tuple[str, Converter]]:
  return {split: (f"{folder}/{file}", formats.adapters_choice) for split, file in splits.items()}


TASKS: dict[str, Task] = {
  t.name: t
  for t in (
    Task(
      "gsm8k",
      NUMBER,
      "math",
      "test",
      "train",
      local={"train": ("gsm8k/train.jsonl", formats.gsm8k), "test": ("gsm8k/test.jsonl", formats.gsm8k)},
      hub=HubSource(
        "openai/gsm8k", "main", {"train": "train", "test": "test"}, formats.gsm8k, {"train": 7473, "test": 1319}
      ),
    ),
    Task(
      "multiarith",
      NUMBER,
      "math",
      "test",
      "train",
      local={"test": ("multiarith/MultiArith.json", formats.multiarith)},
      hub=HubSource(
        "ChilleD/MultiArith",
        None,
        {"train": "train", "test": "test"},
        formats.multiarith_hub,
        {"train": 420, "test": 180},
      ),
    ),
    Task(
      "svamp",
      NUMBER,
      "math",
      "test",
      "train",
      local={"test": ("svamp/SVAMP.json", formats.svamp)},
      hub=HubSource(
        "ChilleD/SVAMP", None, {"train": "train", "test": "test"}, formats.svamp, {"train": 700, "test": 300}
      ),
    ),
    Task(
      "aqua",
      CHOICE,
      "math",
      "test",
      "train",
      local={"test": ("aqua/test.jsonl", formats.aqua)},
      hub=HubSource(
        "deepmind/aqua_rat",
        "raw",
        {"train": "train", "validation": "validation", "test": "test"},
        formats.aqua,
        {"train": 97467, "validation": 254, "test": 254},
      ),
    ),
    Task("addsub", NUMBER, "math", "test", None, local={"test": ("addsub/test.json", formats.adapters_number)}),
    Task("singleeq", NUMBER, "math", "test", None, local={"test": ("singleeq/test.json", formats.adapters_number)}),
    Task("mawps", NUMBER, "math", "train", "train", local={"train": ("mawps/trainset.json", formats.mawps)}),
    Task(
      "csqa",
      CHOICE,
      "commonsense",
      "validation",
      "train",
      local={
        "train": ("csqa/train_rand_split.jsonl", formats.csqa),
        "validation": ("csqa/dev_rand_split.jsonl", formats.csqa),
      },
      hub=HubSource(
        "tau/commonsense_qa",
        None,
        {"train": "train", "validation": "validation"},
        formats.labelled_choices,
        {"train": 9741, "validation": 1221},
      ),
    ),
    Task(
      "obqa",
      CHOICE,
      "commonsense",
      "test",
      "train",
      local=_adapters("obqa", {"train": "train.json", "test": "test.json"}),
      hub=HubSource(
        "allenai/openbookqa",
        "main",
        {"train": "train", "validation": "validation", "test": "test"},
        formats.openbookqa_hub,
        {"train": 4957, "validation": 500, "test": 500},
      ),
      tfds=("openbookqa", formats.openbookqa_tfds),
    ),
    Task(
      "piqa",
      CHOICE,
      "commonsense",
      "validation",
      "train",
      local=_adapters("piqa", {"validation": "validation.json"}),
      hub=HubSource(
        "ybisk/piqa",
        None,
        {"train": "train", "validation": "validation"},
        formats.piqa_hub,
        {"train": 16113, "validation": 1838},
      ),
      tfds=("piqa", formats.piqa_hub),
    ),
    Task(
      "siqa",
      CHOICE,
      "commonsense",
      "validation",
      "train",
      local=_adapters("siqa", {"validation": "validation.json"}),
      hub=HubSource(
        "allenai/social_i_qa",
        None,
        {"train": "train", "validation": "validation"},
        formats.siqa_hub,
        {"train": 33410, "validation": 1954},
      ),
      tfds=("social_i_qa", formats.siqa_hub),
    ),
    Task(
      "arc_challenge",
      CHOICE,
      "commonsense",
      "test",
      "train",
      local=_adapters("arc_challenge", {"test": "test.json"}),
      hub=HubSource(
        "allenai/ai2_arc",
        "ARC-Challenge",
        {"train": "train", "validation": "validation", "test": "test"},
        formats.labelled_choices,
        {"train": 1119, "validation": 299, "test": 1172},
      ),
      tfds=("ai2_arc/ARC-Challenge", formats.labelled_choices),
    ),
    Task(
      "mmlu",
      CHOICE,
      "commonsense",
      "test",
      None,
      local={"dev": ("mmlu/dev/*_dev.csv", formats.mmlu_csv), "test": ("mmlu/test/*_test.csv", formats.mmlu_csv)},
      hub=HubSource(
        "cais/mmlu",
        "all",
        {"dev": "dev", "validation": "validation", "test": "test"},
        formats.mmlu_hub,
        {"dev": 285, "validation": 1531, "test": 14042},
      ),
    ),
    Task(
      "math",
      LATEX,
      "math",
      "test",
      None,
      local={"test": ("math500/test.jsonl", formats.math_solution)},
      hub=HubSource("HuggingFaceH4/MATH-500", None, {"test": "test"}, formats.math_hub, {"test": 500}),
    ),
    Task("arith", NUMBER, "math", "test", "train", generator="synthetic"),
    Task("arith_hard", NUMBER, "math", "test", "train", generator="synthetic"),
    Task("wordmath", NUMBER, "math", "test", "train", generator="word_problems"),
    Task("wordmath_ood", NUMBER, "math", "test", None, generator="word_problems"),
    Task("wordmath_hard", NUMBER, "math", "test", None, generator="word_problems"),
  )
}
SOURCES = ("auto", "local", "hub", "tfds")


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
  return TASKS[name]


def load_examples(
  task_name: str,
  split: str | None = None,
  *,
  source: str = "auto",
  data_dir: str | pathlib.Path | None = None,
  hub_path: str | None = None,
  limit: int | None = None,
  seed: int = 0,
) -> list[Example]:
  """Examples of one split (default: the task's evaluation split), at most `limit` of them.

  source "auto": the built-in generator for synthetic tasks, local files when `data_dir` is
  given, the hub otherwise. `hub_path` replaces the hub dataset id (a mirror or a local copy
  in the hub's format). A limit keeps the first examples, so that a run and its rerun agree.
  """
  task = get_task(task_name)
  split = split or task.eval_split
  if source not in SOURCES:
    raise ValueError(f"source {source!r} is not one of {SOURCES}")
  if task.generator:
    generate = {"synthetic": synthetic.generate, "word_problems": word_problems.generate}[task.generator]
    examples = generate(task.name, split, size=limit, seed=seed)
  elif source == "local" or (source == "auto" and data_dir is not None):
    examples = _load_local(task, split, data_dir)
  elif source == "tfds":
    examples = _load_tfds(task, split)
  else:
    examples = _load_hub(task, split, hub_path)
  return examples[:limit] if limit else examples


def task_names(tasks: str | Sequence[str]) -> list[str]:
  """ "gsm8k,multiarith" or ("gsm8k", "multiarith") → ["gsm8k", "multiarith"]."""
  names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
  return [name.strip() for name in names if name.strip()]


def evaluation_domains(config) -> dict[str, str]:
  """Task -> "in-domain" or "out-domain" of a pipeline config: the in-domain tasks default to the
  task self-refinement samples (the train task, unless cross self-refinement names another); a
  task named on both sides is in-domain."""
  inside = task_names(config.in_domain_tasks or config.refine_task or config.train_task)
  return {name: "in-domain" for name in inside} | {
    name: "out-domain" for name in task_names(config.out_domain_tasks) if name not in inside
  }


def split_size(
  task_name: str, split: str | None = None, *, source: str = "auto", data_dir: str | pathlib.Path | None = None
) -> int | None:
  """How many examples a split holds (default: the evaluation split): generated splits by their
  size, local files counted, hub and TFDS splits as their dataset cards publish them; None where
  that is not known (a hub split without a published size, local files that are not there)."""
  task = get_task(task_name)
  split = split or task.eval_split
  if task.generator == "synthetic":
    return synthetic.SPLIT_SIZES.get(split)
  if task.generator == "word_problems":
    return word_problems.SPLIT_SIZES[task.name].get(split)
  if source == "local" or (source == "auto" and data_dir is not None):
    return _local_size(task.name, split, str(data_dir))
  return task.hub.sizes.get(split) if task.hub else None


@functools.lru_cache
def _local_size(task_name: str, split: str, data_dir: str) -> int | None:
  """Examples in a split's local files, counted once per process (a plan asks for each split
  once per program); None where the files are not there or not readable."""
  try:
    return len(_load_local(get_task(task_name), split, data_dir))
  except (ValueError, DataError):
    return None


def load_training_examples(task_name: str, split: str = "", **options) -> list[Example]:
  """The task's training split (or `split`), with the options of `load_examples`."""
  task = get_task(task_name)
  split = split or task.train_split
  if split is None:
    raise ValueError(f"task {task.name} has no training split; name one with --config.split")
  return load_examples(task.name, split, **options)


def _load_local(task: Task, split: str, data_dir) -> list[Example]:
  if data_dir is None:
    raise ValueError(f"task {task.name}: local files need a data directory (data_dir)")
  if split not in task.local:
    raise ValueError(f"task {task.name}: no local {split!r} split; local splits are {sorted(task.local)}")
  pattern, converter = task.local[split]
  folder = io.as_path(data_dir)
  paths = sorted(folder.glob(pattern)) if "*" in pattern else [folder / pattern]
  if not paths or not paths[0].exists():
    raise DataError(f"task {task.name}: {folder / pattern} not found")
  examples = []
  for path in paths:
    rows = read_csv_rows(path) if path.suffix == ".csv" else read_rows(path)
    stem = path.stem.removesuffix(f"_{split}")
    for index, (line, row) in enumerate(rows):
      default_id = f"{stem}/{index}" if len(paths) > 1 else index
      examples.append(converter(task.name, Row(row, f"{path}:{line}"), default_id))
  return examples


def _load_hub(task: Task, split: str, hub_path: str | None) -> list[Example]:
  if task.hub is None:
    raise ValueError(f"task {task.name}: no Hugging Face hub dataset is known; give local files (data_dir)")
  if split not in task.hub.splits:
    raise ValueError(f"task {task.name}: no hub split {split!r}; hub splits are {sorted(task.hub.splits)}")
  import datasets

  path = hub_path or task.hub.path
  name = task.hub.name if hub_path is None else None
  rows = datasets.load_dataset(path, name, split=task.hub.splits[split])
  where = f"{path}[{task.hub.splits[split]}]"
  return [task.hub.converter(task.name, Row(dict(row), f"{where} row {i}"), i) for i, row in enumerate(rows)]


def _load_tfds(task: Task, split: str) -> list[Example]:
  if task.tfds is None:
    raise ValueError(f"task {task.name}: no TFDS builder is known; use source='hub' or local files")
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("TFDS loading needs the tfds extra: pip install 'srit_jax[tfds]'") from e
  builder, converter = task.tfds
  rows = tfds.as_numpy(tfds.load(builder, split=split))
  return [converter(task.name, Row(_decoded(row), f"tfds:{builder}[{split}] row {i}"), i) for i, row in enumerate(rows)]


def _decoded(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _decoded(v) for k, v in value.items()}
  if hasattr(value, "tolist"):
    return _decoded(value.tolist())
  if isinstance(value, list):
    return [_decoded(v) for v in value]
  return value
