"""`srit-jax eval`: greedy accuracy of a model on a list of tasks, with chain-of-thought (and,
optionally, direct answers), 95% Wilson intervals, per-example JSONL, summary JSON and a
Markdown table. On numeric tasks each entry also says how many CoT answers hold a wrong
arithmetic step and how accurate the others are (srit_jax/tasks/arithmetic.py): a slip of
calculation against a wrong chain of reasoning. With `SampledAnswers`, each question is also
answered several times by sampling: pass@k (the unbiased estimator, for k = 1, 2, 4, ... up to
the count) and the majority vote's accuracy (self-consistency), with bootstrap and Wilson
intervals. Generations stream to disk, so a killed evaluation resumes."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

from srit_jax import io
from srit_jax.generation.jsonl import Completion, generate_texts
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.statistics import mean_interval, paired_comparison, paired_mean_difference, pass_at_k, wilson_interval
from srit_jax.tasks import answers, arithmetic, prompts
from srit_jax.tasks.example import NUMBER, Example
from srit_jax.tasks.registry import get_task, load_examples, load_training_examples, task_names


def score_generations(examples: Sequence[Example], completions: Sequence[Completion], style: str) -> list[dict]:
  rows = []
  for example, completion in zip(examples, completions, strict=True):
    text = completion.text
    extracted = answers.extract_answer(example, text)
    rows.append(
      {
        "task": example.task,
        "id": example.id,
        "style": style,
        "prompt": prompts.prompt(example, style),
        "generation": text,
        "stop_reason": completion.stop_reason,
        "extracted": extracted,
        "gold": example.gold,
        "correct": answers.is_correct(example, extracted),
      }
    )
  return rows


@dataclasses.dataclass(frozen=True)
class SampledAnswers:
  """CoT answers sampled per question beside the greedy one."""

  count: int
  settings: SamplingSettings
  seed: int = 0

  def __post_init__(self):
    if self.count < 1 or self.settings.greedy:
      raise ValueError(f"sampled answers need a count >= 1 and a temperature > 0, got {self}")

  def ks(self) -> list[int]:
    """The k of pass@k reported: 1, 2, 4, ... below the count, and the count."""
    return sorted({2**i for i in range(self.count.bit_length()) if 2**i <= self.count} | {self.count})


def score_samples(examples: Sequence[Example], completions: Sequence[Sequence[Completion]]) -> list[dict]:
  """Per question: each sample's extracted answer and whether it is right, and the majority vote's."""
  rows = []
  for example, samples in zip(examples, completions, strict=True):
    extracted = [answers.extract_answer(example, c.text) for c in samples]
    majority = answers.majority_answer(example, extracted)
    rows.append(
      {
        "task": example.task,
        "id": example.id,
        "extracted": extracted,
        "correct": [answers.is_correct(example, e) for e in extracted],
        "majority": majority,
        "majority_correct": answers.is_correct(example, majority),
        "gold": example.gold,
      }
    )
  return rows


def sampled_entry(rows: list[dict], sampled: SampledAnswers) -> dict:
  """pass@k with 95% bootstrap intervals over questions, and the majority vote's accuracy."""
  pass_at = {}
  for k in sampled.ks():
    value, low, high = mean_interval([pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in rows])
    pass_at[str(k)] = {"value": value, "ci95": [low, high]}
  majority = accuracy_entry([{"correct": r["majority_correct"]} for r in rows])
  settings = dataclasses.asdict(sampled.settings)
  return {"samples": sampled.count, **settings, "seed": sampled.seed, "pass_at": pass_at, "majority": majority}


def per_question_outcomes(answers: str | pathlib.Path) -> dict[str, bool]:
  """Question id -> correct, from an evaluation's answers file (TASK.cot.jsonl): what paired
  statistics compare. Of a sampled answers file (TASK.cot.sampled.jsonl): the majority vote's."""
  outcome = "majority_correct" if pathlib.PurePath(str(answers)).name.endswith(".sampled.jsonl") else "correct"
  rows = io.read_records(answers, required={"id": (str, int), outcome: bool})
  return {str(row["id"]): row[outcome] for _, row in rows}


def per_question_samples(answers: str | pathlib.Path) -> dict[str, list[bool]]:
  """Question id -> whether each of its sampled answers is right, from a sampled answers file
  (TASK.cot.sampled.jsonl): what `paired_samples` compares."""
  samples = {}
  for line, row in io.read_records(answers, required={"id": (str, int), "correct": list}):
    if not row["correct"] or not all(isinstance(c, bool) for c in row["correct"]):
      raise io.DataError(f"{answers}:{line}: field 'correct' must be a non-empty list of true and false")
    samples[str(row["id"])] = row["correct"]
  return samples


def paired_samples(first: dict[str, list[bool]], second: dict[str, list[bool]], *, seed: int = 0) -> dict:
  """Two stages' sampled answers on the questions both answered (second against first): pass@1,
  each question's share of right answers, paired by bootstrap; and where every question has the
  same number k of answers in both, pass@k, whether any of a question's answers is right, paired
  like greedy answers (`paired_comparison`: McNemar) with its `k`. Whether a refinement makes
  the student right more often on what it could already answer (pass@1) or changes what it can
  answer at all (pass@k)."""
  shared = set(first) & set(second)

  def share_right(samples):
    return {i: sum(samples[i]) / len(samples[i]) for i in shared}

  out = {"pass@1": paired_mean_difference(share_right(first), share_right(second), seed=seed)}
  counts = {len(first[i]) for i in shared} | {len(second[i]) for i in shared}
  if len(counts) == 1:
    reached = paired_comparison({i: any(first[i]) for i in shared}, {i: any(second[i]) for i in shared}, seed=seed)
    out["pass@k"] = {"k": counts.pop(), **reached}
  return out


def accuracy_entry(rows: list[dict]) -> dict:
  correct = sum(r["correct"] for r in rows)
  low, high = wilson_interval(correct, len(rows))
  return {"n": len(rows), "correct": correct, "accuracy": correct / max(1, len(rows)), "ci95": [low, high]}


def evaluate(
  model,
  examples_by_task: dict[str, list[Example]],
  out_dir: str | pathlib.Path,
  *,
  styles: Sequence[str] = (prompts.COT,),
  max_new_tokens: dict[str, int] | None = None,
  batch_size: int = 16,
  chat_template: bool = True,
  stop_strings: Sequence[str] = (),
  sampled: SampledAnswers | None = None,
  shots: dict[str, list[Example]] | None = None,
  progress: bool = True,
) -> dict:
  """Accuracy per task and prompt style; writes {task}.{style}.jsonl, summary.json, results.md,
  and with `sampled` {task}.cot.sampled.jsonl (each question's sampled answers and their vote).
  `shots` (per task, worked examples of its training split) go before every question."""
  out_dir = io.as_path(out_dir)
  max_new_tokens = {prompts.COT: 256, prompts.DIRECT: 32, **(max_new_tokens or {})}
  summary: dict[str, dict] = {}
  for task, examples in examples_by_task.items():
    for style in styles:
      worked = [prompts.shot(e, style) for e in (shots or {}).get(task, [])]
      records = [
        {"prompt": prompts.prompt(e, style), "response_prefix": prompts.response_prefix(e, style), "id": e.id}
        | ({"shots": worked} if worked else {})
        for e in examples
      ]
      generation = dict(
        max_new_tokens=max_new_tokens[style],
        batch_size=batch_size,
        stop_strings=prompts.stop_strings(style, stop_strings),
        chat_template=chat_template,
        progress=progress,
      )
      completions = generate_texts(
        model,
        records,
        out_dir / f"{task}.{style}.generations.jsonl",
        settings=SamplingSettings(temperature=0.0),
        **generation,
      )
      rows = score_generations(examples, [samples[0] for samples in completions], style)
      io.write_jsonl(out_dir / f"{task}.{style}.jsonl", rows)
      entry = accuracy_entry(rows) | ({"shots": len(worked)} if worked else {})
      if style == prompts.COT and examples and examples[0].answer_type == NUMBER:
        entry["arithmetic"] = arithmetic.profile((r["generation"], r["correct"]) for r in rows)
      if style == prompts.COT and sampled:
        completions = generate_texts(
          model,
          records,
          out_dir / f"{task}.{style}.sampled.generations.jsonl",
          settings=sampled.settings,
          num_samples=sampled.count,
          seed=sampled.seed,
          **generation,
        )
        sampled_rows = score_samples(examples, completions)
        io.write_jsonl(out_dir / f"{task}.{style}.sampled.jsonl", sampled_rows)
        entry["sampled"] = sampled_entry(sampled_rows, sampled)
      summary.setdefault(task, {})[style] = entry
  io.write_json(out_dir / "summary.json", summary)
  io.write_text(out_dir / "results.md", results_table(summary) + "\n")
  return summary


def results_table(summary: dict) -> str:
  styles = sorted({style for entry in summary.values() for style in entry})
  header = "| task | n | " + " | ".join(f"{s} accuracy (95% CI)" for s in styles) + " |"
  lines = [header, "|---|---:|" + "---:|" * len(styles)]
  for task, entry in summary.items():
    n = next(iter(entry.values()))["n"]
    cells = []
    for s in styles:
      if s in entry:
        e = entry[s]
        cells.append(_percent(e["accuracy"], e["ci95"]))
      else:
        cells.append("")
    lines.append(f"| {task} | {n} | " + " | ".join(cells) + " |")
  sampled = {
    task: entry[prompts.COT]["sampled"] for task, entry in summary.items() if "sampled" in entry.get(prompts.COT, {})
  }
  if sampled:
    lines += ["", sampled_table(sampled)]
  return "\n".join(lines)


def headline_figures(entry: dict) -> list[tuple[str, float, list[float]]]:
  """(name, value, 95% interval) of a "sampled" summary entry's pass@1, pass@k (k the answers
  sampled) and majority vote: what the pipeline's and the study's tables show of it."""
  k = entry["samples"]
  first, last, majority = entry["pass_at"]["1"], entry["pass_at"][str(k)], entry["majority"]
  return [
    ("pass@1", first["value"], first["ci95"]),
    (f"pass@{k}", last["value"], last["ci95"]),
    ("majority vote", majority["accuracy"], majority["ci95"]),
  ]


def sampled_table(sampled: dict[str, dict]) -> str:
  """pass@k and majority-vote accuracy per task, from the summaries' "sampled" entries."""
  ks = sorted({int(k) for entry in sampled.values() for k in entry["pass_at"]})
  header = "| task | n | answers (temperature) | " + " | ".join(f"pass@{k}" for k in ks) + " | majority vote |"
  lines = [header, "|---|---:|---:|" + "---:|" * (len(ks) + 1)]
  for task, entry in sampled.items():
    cells = []
    for k in ks:
      value = entry["pass_at"].get(str(k))
      cells.append(_percent(value["value"], value["ci95"]) if value else "")
    majority = entry["majority"]
    cells.append(_percent(majority["accuracy"], majority["ci95"]))
    row = f"| {task} | {majority['n']} | {entry['samples']} ({entry['temperature']:g}) | " + " | ".join(cells) + " |"
    lines.append(row)
  return "\n".join(lines)


def _percent(value: float, ci95) -> str:
  return f"{100 * value:.1f}% ({100 * ci95[0]:.1f}–{100 * ci95[1]:.1f})"


def sampled_answers(config) -> SampledAnswers | None:
  """The sampled answers an eval config asks for (`sampled_answers`, `temperature`, `top_p`,
  `sampling_seed`), or None."""
  if not config.sampled_answers:
    return None
  settings = SamplingSettings(temperature=config.temperature, top_p=config.top_p)
  return SampledAnswers(config.sampled_answers, settings, seed=config.sampling_seed)


def worked_examples(config) -> dict[str, list[Example]] | None:
  """Per task, the first `num_shots` examples of its training split (worked examples shown before
  each question), or None for zero-shot evaluation."""
  if not config.num_shots:
    return None
  shots = {}
  for name in task_names(config.tasks):
    shots[name] = load_training_examples(
      name, source=config.source, data_dir=config.data_dir or None, limit=config.num_shots, seed=config.seed
    )
    if len(shots[name]) < config.num_shots:
      raise ValueError(f"num_shots = {config.num_shots}: {name}'s training split holds {len(shots[name])} examples")
  return shots


def evaluation_examples(config) -> dict[str, list[Example]]:
  return {
    name: load_examples(
      name,
      config.split or get_task(name).eval_split,
      source=config.source,
      data_dir=config.data_dir or None,
      limit=config.limit or None,
      seed=config.seed,
    )
    for name in task_names(config.tasks)
  }


def run(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  from srit_jax import sharding
  from srit_jax.configs import checks
  from srit_jax.conversion import loading

  checks.check(config, "eval")
  examples = evaluation_examples(config)
  mesh = sharding.mesh_from_config(config.mesh)
  model = loading.load_model(
    config.model,
    mesh=mesh,
    dtype=config.dtype,
    param_dtype=config.dtype,  # evaluation trains nothing: no master weights
    attention=config.attention,
    progress=progress,
  )
  styles = [prompts.COT] + ([prompts.DIRECT] if config.direct else [])
  summary = evaluate(
    model,
    examples,
    workdir,
    styles=styles,
    max_new_tokens={prompts.COT: config.max_new_tokens, prompts.DIRECT: config.max_new_tokens_direct},
    batch_size=config.batch_size,
    chat_template=config.chat_template,
    stop_strings=tuple(config.stop_strings),
    sampled=sampled_answers(config),
    shots=worked_examples(config),
    progress=progress,
  )
  print(results_table(summary))
  if config.paired_with:
    io.barrier("answers written")  # every process reads them back, as process 0 wrote them
    paired = paired_with(summary, workdir, config.paired_with)
    io.write_json(io.as_path(workdir) / "paired.json", paired)
    table = paired_table(paired, config.paired_with)
    io.write_text(io.as_path(workdir) / "results.md", results_table(summary) + "\n\n" + table + "\n")
    print(table)
  return summary


SAMPLED_FILE = "{task}.cot.sampled.jsonl"
PAIRED_FILES = (("greedy", "{task}.cot.jsonl"), ("majority vote", SAMPLED_FILE))


def paired_with(summary: dict, out_dir: str | pathlib.Path, other_dir: str | pathlib.Path) -> dict:
  """Per task of `summary` that another evaluation (`other_dir`, an earlier eval workdir) also
  answered: this evaluation's CoT answers paired with its answers on the questions both answered
  (second − first is this − other), and where both sampled answers, their majority votes, pass@1
  and pass@k too (`paired_samples`)."""
  out_dir, other_dir = io.as_path(out_dir), io.as_path(other_dir)
  paired = {}
  for task in summary:
    for answers_kind, name in PAIRED_FILES:
      mine, theirs = out_dir / name.format(task=task), other_dir / name.format(task=task)
      if mine.exists() and theirs.exists():
        comparison = paired_comparison(per_question_outcomes(theirs), per_question_outcomes(mine))
        if comparison["n"]:
          paired.setdefault(task, {})[answers_kind] = comparison
    if "majority vote" in paired.get(task, {}):  # both sampled answers to shared questions
      sampled = SAMPLED_FILE.format(task=task)
      samples = paired_samples(per_question_samples(other_dir / sampled), per_question_samples(out_dir / sampled))
      paired[task]["pass@1"] = samples["pass@1"]
      if "pass@k" in samples:
        paired[task][f"pass@{samples['pass@k']['k']}"] = samples["pass@k"]
  if not paired:
    raise ValueError(
      f"paired_with = {str(other_dir)!r}: holds no answers to the questions of {', '.join(summary)} "
      "(TASK.cot.jsonl of an eval workdir, on the same questions)"
    )
  return paired


def paired_table(paired: dict, other_dir) -> str:
  lines = [
    f"This model − the model evaluated in {other_dir}, paired on the questions both answered (accuracy points, "
    "95% bootstrap interval; exact McNemar test):",
    "",
    "| task | answers | n | this − other | other right, this wrong | this right, other wrong | McNemar p |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  for task, kinds in paired.items():
    for answers_kind, c in kinds.items():
      low, high = c["ci95"]
      counts = "— | — | —"  # pass@1 is a share of each question's answers: no right-or-wrong to count or test
      if "mcnemar_p" in c:
        counts = f"{c['only_first_correct']} | {c['only_second_correct']} | {c['mcnemar_p']:.3g}"
      lines.append(
        f"| {task} | {answers_kind} | {c['n']} | {100 * c['difference']:+.1f} ({100 * low:+.1f} to {100 * high:+.1f}) "
        f"| {counts} |"
      )
  return "\n".join(lines)
