"""One validation pass over a run config before any work: every problem at once, each naming
the field, the value and what is allowed.

    check(config, "sft")   # raises ConfigError listing every problem

Fields are checked by name wherever they sit (a phase config, or a phase block of a pipeline
config): sizes and steps are positive, rates and counts non-negative, probabilities in range,
enumerations one of their values, mesh axes sizes or -1, a batch divisible into its
microbatches. Then what the command itself needs: the files it reads exist, the tasks are
known, the model is something that can be loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ml_collections import ConfigDict

from srit_jax import io

COMMANDS = ("demos", "sft", "refine", "eval", "pipeline", "generate", "complete", "plan")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """Settings that cannot run; `problems` holds one line per problem."""

  def __init__(self, problems: list[str]):
    self.problems = problems
    super().__init__("invalid settings:\n" + "\n".join(f"  {p}" for p in problems))


def _number(low=None, high=None, *, low_open=False, high_open=False, integer=False) -> Callable:
  def check(value):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
      return f"must be {'an integer' if integer else 'a number'}"
    if low is not None and (value <= low if low_open else value < low):
      return f"must be {'>' if low_open else '>='} {low}"
    if high is not None and (value >= high if high_open else value > high):
      return f"must be {'<' if high_open else '<='} {high}"
    return None

  return check


def _one_of(*allowed) -> Callable:
  named = ", ".join(str(a) if a != "" else "'' (the default)" for a in allowed)
  return lambda value: None if value in allowed else f"must be one of {named}"


POSITIVE_INT = _number(1, integer=True)
NON_NEGATIVE_INT = _number(0, integer=True)
NON_NEGATIVE = _number(0)
PROBABILITY = _number(0, 1)


def _rules() -> dict[str, Callable]:
  """Checks by field name (the last part of its path); a dotted key matches a path's end."""
  from srit_jax.configs import demos, refine
  from srit_jax.data import preference_pairs
  from srit_jax.model.config import ATTENTION_KERNELS, REMAT_POLICIES
  from srit_jax.tasks.registry import SOURCES
  from srit_jax.teachers import build, precomputed
  from srit_jax.training import dpo_step, optimizer

  return {
    **dict.fromkeys(
      (
        "batch_size",
        "num_steps",
        "max_length",
        "save_every",
        "keep_checkpoints",
        "num_microbatches",
        "chunk_size",
        "max_new_tokens",
        "max_new_tokens_direct",
        "generate_batch_size",
        "num_samples",
        "max_pairs_per_question",
        "concurrency",
        "round",
      ),
      POSITIVE_INT,
    ),
    **dict.fromkeys(
      (
        "limit",
        "eval_every",
        "warmup_steps",
        "num_cot_samples",
        "num_direct_samples",
        "top_k",
        "seed",
        "sampling_seed",
        "early_stopping_patience",
        "max_retries",
        "new_questions",
        "heldout_questions",
        "pack_length",
        "sampled_answers",
        "num_shots",
      ),
      NON_NEGATIVE_INT,
    ),
    **dict.fromkeys(("weight_decay", "nll_weight", "temperature", "num_epochs"), NON_NEGATIVE),
    "learning_rate": _number(0, low_open=True),
    "beta": _number(0, low_open=True),
    "eps": _number(0, low_open=True),
    "timeout_s": _number(0, low_open=True),
    "label_smoothing": _number(0, 0.5),
    "top_p": _number(0, 1, low_open=True),
    "heldout_fraction": _number(0, 1, high_open=True),
    "end_lr_fraction": PROBABILITY,
    "b1": _number(0, 1, high_open=True),
    "b2": _number(0, 1, high_open=True),
    "clip_norm": _number(),
    "simpo_gamma": _number(),
    "dpop_lambda": _number(0),
    "dtype": _one_of(*DTYPES),
    "param_dtype": _one_of(*DTYPES),
    "remat_policy": _one_of(*REMAT_POLICIES),
    "attention": _one_of(*ATTENTION_KERNELS),
    "loss_type": _one_of(*dpo_step.LOSS_TYPES),
    "selection_loss_type": _one_of("", *dpo_step.LOSS_TYPES),
    "loss_normalization": _one_of("token", "sequence"),
    "strategy": _one_of(*preference_pairs.STRATEGIES),
    "keep": _one_of(*demos.KEEP),
    "questions": _one_of(*refine.QUESTIONS),
    "pair_packing": _one_of(*dpo_step.PAIR_PACKINGS),
    "select_checkpoint": _one_of(*refine.SELECT_CHECKPOINT),
    "source": _one_of(*SOURCES),
    "schedule": _one_of(*optimizer.SCHEDULES),
    "teacher.kind": _one_of(*build.KINDS),
    "teacher.reader": _one_of(*precomputed.READERS),
    "teacher.split": _one_of("train", "test"),
  }


def _leaves(config: ConfigDict, prefix: str = ""):
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ConfigDict):
      yield from _leaves(value, path + ".")
    else:
      yield path, value


def _rule_for(path: str, rules: dict[str, Callable]) -> Callable | None:
  parts = path.split(".")
  for start in range(max(len(parts) - 2, 0), len(parts)):  # "teacher.kind" before "kind"
    rule = rules.get(".".join(parts[start:]))
    if rule is not None:
      return rule
  return None


def _blocks(config: ConfigDict, prefix: str = ""):
  """(path prefix, block) of the config and every nested block."""
  yield prefix, config
  for key, value in config.items():
    if isinstance(value, ConfigDict):
      yield from _blocks(value, f"{prefix}{key}.")


def field_problems(config: ConfigDict) -> list[str]:
  """Ranges and enumerations of every field, mesh blocks, batch divisibility."""
  rules = _rules()
  problems = []
  for path, value in _leaves(config):
    rule = _rule_for(path, rules)
    message = rule(value) if rule else None
    if message:
      problems.append(f"{path} = {value!r}: {message}")
  for prefix, block in _blocks(config):
    if prefix.endswith("mesh."):
      sizes = {axis: block.get(axis) for axis in ("data", "fsdp", "tensor")}
      for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
          problems.append(f"{prefix}{axis} = {size!r}: must be a positive integer or -1 (the remaining devices)")
      if list(sizes.values()).count(-1) > 1:
        problems.append(f"{prefix[:-1]}: at most one axis may be -1, got {sizes}")
    batch, micro = block.get("batch_size"), block.get("num_microbatches")
    if isinstance(batch, int) and isinstance(micro, int) and batch > 0 and micro > 0 and batch % micro:
      problems.append(f"{prefix}batch_size = {batch}: does not split into {prefix}num_microbatches = {micro} slices")
  return problems


def _exists(path: str, field: str, problems: list[str], kind: str = "file") -> None:
  p = io.as_path(path)
  if not (p.is_file() if kind == "file" else p.is_dir()):
    problems.append(f"{field} = {path!r}: no such {kind}")


def _model_problem(model: str, field: str) -> str | None:
  from srit_jax.conversion import fetch, loading

  if io.as_path(model).exists() or model in fetch.KNOWN_MODELS or loading.is_hub_id(model):
    return None
  return (
    f"{field} = {model!r}: not a directory, a .gguf file, a known model ({', '.join(fetch.KNOWN_MODELS)}) "
    "or a hub id (org/name)"
  )


def _task_problems(names: str, field: str, *, required: bool = True) -> list[str]:
  from srit_jax.tasks.registry import TASKS

  listed = [n.strip() for n in str(names).split(",") if n.strip()]
  if required and not listed:
    return [f"{field} = {names!r}: name at least one task"]
  return [f"{field}: unknown task {name!r}; tasks: {', '.join(sorted(TASKS))}" for name in listed if name not in TASKS]


def _held_out_selection_problems(config: ConfigDict, field, *, held_out: bool, start_and_end: bool = False) -> list:
  """A training block's choice of its step by held-out loss (select_checkpoint, early stopping):
  it needs held-out data, and evaluations during the run (`start_and_end`: a block that also
  evaluates its first and last steps chooses between those without eval_every)."""
  held_out_name = (
    field("heldout_fraction") + " > 0" if start_and_end else f"{field('eval_file')} or {field('heldout_fraction')}"
  )
  problems = []
  if config.select_checkpoint == "best_heldout" and not held_out:
    problems.append(f"{field('select_checkpoint')} = 'best_heldout': needs held-out data ({held_out_name})")
  elif config.select_checkpoint == "best_heldout" and not (start_and_end or config.eval_every):
    problems.append(f"{field('select_checkpoint')} = 'best_heldout': needs {field('eval_every')} > 0 (its candidates)")
  if config.early_stopping_patience and not (
    config.select_checkpoint == "best_heldout" and config.eval_every and held_out
  ):
    problems.append(
      f"{field('early_stopping_patience')} = {config.early_stopping_patience}: stopping early needs "
      f"{field('select_checkpoint')}='best_heldout', {field('eval_every')} > 0 and {held_out_name} "
      "(it stops on the held-out loss and keeps its lowest step)"
    )
  return problems


def command_problems(config: ConfigDict, command: str, prefix: str = "", *, linked: tuple[str, ...] = ()) -> list[str]:
  """What `command` needs of its block: files that exist, known tasks, a loadable model.

  `linked` names fields a pipeline fills in itself (they are not checked).
  """
  problems: list[str] = []

  def field(name):
    return f"{prefix}{name}"

  def wanted(name):
    return name in config and name not in linked

  if wanted("model") and isinstance(config.model, str):
    problem = _model_problem(config.model, field("model"))
    if problem:
      problems.append(problem)
  if wanted("data_dir") and config.data_dir:
    _exists(config.data_dir, field("data_dir"), problems, "directory")
  if command == "sft":
    if wanted("train_file"):
      if not config.train_file:
        problems.append(f"{field('train_file')}: required (JSONL instruction records, e.g. DIR/demos.jsonl)")
      else:
        _exists(config.train_file, field("train_file"), problems)
    eval_file = config.eval_file or ("eval_file" in linked)  # the pipeline's: the held-out questions' demonstrations
    if config.eval_file:
      _exists(config.eval_file, field("eval_file"), problems)
    if eval_file and config.heldout_fraction:
      problems.append(
        f"{field('heldout_fraction')} = {config.heldout_fraction} with "
        f"{'demos.heldout_questions' if 'eval_file' in linked else field('eval_file')}: one held-out set; set either"
      )
    problems += _held_out_selection_problems(config, field, held_out=bool(eval_file or config.heldout_fraction))
  if command == "refine":
    from srit_jax.training import dpo_step

    if wanted("reference_model") and config.reference_model:
      problem = _model_problem(config.reference_model, field("reference_model"))
      if config.loss_type in dpo_step.REFERENCE_FREE_PREFERENCE:
        problem = f"{field('reference_model')}: loss_type {config.loss_type!r} reads no reference; leave it empty"
      if problem:
        problems.append(problem)
    if wanted("task"):
      problems += _task_problems(config.task, field("task"))
    needs_demos = config.questions == "demos" or config.teacher_fallback or config.new_questions
    if wanted("demos_file"):
      if needs_demos and not config.demos_file:
        problems.append(f"{field('demos_file')}: required by questions='demos', teacher_fallback=True or new_questions")
      elif config.demos_file:
        _exists(config.demos_file, field("demos_file"), problems)
    problems += _held_out_selection_problems(config, field, held_out=bool(config.heldout_fraction), start_and_end=True)
    if config.label_smoothing and config.loss_type not in dpo_step.SMOOTHED:
      problems.append(
        f"{field('label_smoothing')} = {config.label_smoothing}: loss_type {config.loss_type!r} has none "
        f"(only {' and '.join(dpo_step.SMOOTHED)} smooth their labels)"
      )
    if config.selection_loss_type and config.select_checkpoint != "best_heldout":
      problems.append(
        f"{field('selection_loss_type')} = {config.selection_loss_type!r}: it chooses the step kept; "
        f"set {field('select_checkpoint')} = 'best_heldout' or leave it empty"
      )
    if dpo_step.uses_reference(config.selection_loss_type or config.loss_type) and not dpo_step.uses_reference(
      config.loss_type
    ):
      problems.append(
        f"{field('selection_loss_type')} = {config.selection_loss_type!r} reads a reference; "
        f"loss_type {config.loss_type!r} has none"
      )
    if config.loss_type == "nll" and config.nll_weight:
      problems.append(
        f"{field('nll_weight')} = {config.nll_weight}: the loss type 'nll' is the NLL term alone; set it to 0"
      )
  if command == "eval" and wanted("tasks"):
    problems += _task_problems(config.tasks, field("tasks"))
  if command == "eval" and config.get("paired_with"):
    _exists(config.paired_with, field("paired_with"), problems, kind="directory")
  if command == "eval" and config.sampled_answers and config.temperature == 0:
    problems.append(
      f"{field('temperature')} = 0: the {config.sampled_answers} sampled answers of {field('sampled_answers')} "
      "would all be the greedy one; set a temperature > 0"
    )
  if command == "demos":
    if config.heldout_questions and not config.limit:
      problems.append(
        f"{field('heldout_questions')} = {config.heldout_questions}: the held-out questions are those after the "
        f"first {field('limit')}; set a limit"
      )
    teacher = config.teacher
    if teacher.kind != "precomputed" and wanted("task"):
      problems += _task_problems(config.task, field("task"))
    if teacher.kind == "precomputed":
      if not teacher.path:
        problems.append(f"{field('teacher.path')}: required by teacher.kind='precomputed'")
      elif not io.as_path(teacher.path).exists():
        problems.append(f"{field('teacher.path')} = {teacher.path!r}: no such file or directory")
    if teacher.kind == "local":
      problem = _model_problem(teacher.model, field("teacher.model"))
      if problem:
        problems.append(problem)
    if teacher.kind == "openai" and not re.match(r"https?://", teacher.base_url):
      problems.append(f"{field('teacher.base_url')} = {teacher.base_url!r}: must be an http(s) URL")
  if command == "generate":
    if config.prompts_file:
      _exists(config.prompts_file, field("prompts_file"), problems)
    elif not config.prompts:
      problems.append(f"{field('prompts')}: empty, and no prompts_file given")
  if command == "complete" and not config.prompts:
    problems.append(f"{field('prompts')}: give at least one prompt")
  return problems


def problems(config: ConfigDict, command: str) -> list[str]:
  """Every problem of `config` for `command`."""
  found = field_problems(config)
  if command == "pipeline":
    problem = _model_problem(config.student, "student")
    if problem:
      found.append(problem)
    found += _task_problems(config.train_task, "train_task")
    found += _task_problems(config.refine_task, "refine_task", required=False)
    found += _task_problems(config.in_domain_tasks, "in_domain_tasks", required=False)  # empty: the refine task
    found += _task_problems(config.out_domain_tasks, "out_domain_tasks", required=False)
    if config.data_dir:
      _exists(config.data_dir, "data_dir", found, "directory")
    for folder in filter(None, (f.strip() for f in config.reuse_phases_from.split(","))):
      _exists(folder, "reuse_phases_from", found, "directory")
    found += command_problems(config.demos, "demos", "demos.", linked=("task", "data_dir"))
    held_out_demos = ("eval_file",) if config.demos.heldout_questions else ()
    if held_out_demos and config.sft.eval_file:
      found.append("sft.eval_file with demos.heldout_questions: the pipeline's SFT is held out on those; set either")
    found += command_problems(config.sft, "sft", "sft.", linked=("model", "train_file", *held_out_demos))
    found += command_problems(
      config.refine, "refine", "refine.", linked=("model", "reference_model", "task", "demos_file", "data_dir")
    )
    seed_hints = {
      "demos": "set seed",
      "refine": "for another draw of samples on the same questions set refine.sampling_seed",
    }
    for block, hint in seed_hints.items():  # the pipeline sets them: its questions must be one set
      if config[block].seed not in (0, config.seed):
        found.append(f"{block}.seed = {config[block].seed}: the pipeline sets it to seed ({config.seed}); {hint}")
    if not isinstance(config.refine_iterations, int) or config.refine_iterations < 1:
      found.append(f"refine_iterations = {config.refine_iterations!r}: must be an integer >= 1")
    if config.refine_reference not in ("sft", "previous"):
      found.append(f"refine_reference = {config.refine_reference!r}: must be one of sft, previous")
    from srit_jax.configs.refine import SELECT_CHECKPOINT

    if config.control_select_checkpoint not in ("", *SELECT_CHECKPOINT):
      choices = ", ".join(SELECT_CHECKPOINT)
      found.append(
        f"control_select_checkpoint = {config.control_select_checkpoint!r}: must be empty "
        f"(as refine.select_checkpoint) or one of {choices}"
      )
    if config.control and config.control_select_checkpoint == "last" and config.refine.early_stopping_patience:
      found.append(
        "control_select_checkpoint = 'last' with refine.early_stopping_patience: a control stopped early keeps "
        "its step of lowest held-out loss; set control_select_checkpoint to '' or 'best_heldout'"
      )
    found += command_problems(config.eval, "eval", "eval.", linked=("model", "tasks", "data_dir", "paired_with"))
    if config.eval.get("num_shots"):
      found.append(
        f"eval.num_shots = {config.eval.num_shots}: the pipeline evaluates its students zero-shot, as the method "
        "does; evaluate with worked examples through `srit-jax eval`"
      )
    if config.eval.get("paired_with"):
      found.append(
        f"eval.paired_with = {config.eval.paired_with!r}: the pipeline pairs its own stages with each other; "
        "pair with another evaluation through `srit-jax eval`"
      )
  elif command in COMMANDS:
    found += command_problems(config, command)
  return found


def check(config: ConfigDict, command: str) -> None:
  """Raises ConfigError naming every problem of `config` for `command`."""
  found = problems(config, command)
  if found:
    raise ConfigError(found)
