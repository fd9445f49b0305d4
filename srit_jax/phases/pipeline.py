"""`srit-jax pipeline`: the whole method — demos → sft → refine → eval of every stage.

    srit-jax pipeline --config=configs/demo.py --workdir=runs/demo

Each phase runs in WORKDIR/<phase> and, when it completes, writes DONE.json with a fingerprint
of its config and of the phases it reads from. A rerun skips phases whose fingerprint matches,
reruns (and says why) phases whose config changed — and so every phase after them — and
resumes a phase that was interrupted. The untuned, instruction-tuned and self-refined
students are evaluated on the in-domain and out-domain tasks; the run ends with results.json,
results.md, accuracy.png and training_curves.png.

Self-refinement runs `refine_iterations` rounds on `refine_task` (the train task unless the
paper's cross self-refinement asks for another; the in-domain tasks default to it), each round
sampling from the student the last one left, against the SFT student or (refine_reference =
"previous") that round's own start. With `control`, a compute-matched control trains beside
it: the same rounds, steps and pairs (its first round uses the refined chain's own samples),
cross-entropy on the chosen answers only (loss_type "nll"), evaluated and paired with both SFT
and SRIT. With `eval_rounds`, every round's student is evaluated on the in-domain tasks; with
`eval_untuned` off, the untuned student is not (nor paired with the others). With
`eval.sampled_answers`, every stage also samples that many CoT answers a question: pass@k and
the majority vote per stage, and the stages paired on them: their majority votes like their
greedy answers, their pass@1 (each question's share of right answers) and pass@k (whether any is
right).

With `reuse_phases_from` (other runs' workdirs, or a folder of them), a phase that one of them
finished with the same fingerprint is taken over as hard links rather than run again, and a
refine round that does run takes over their samples and reference log-probs made from the same
inputs: a sweep makes its shared demonstrations, SFT, evaluations and controls once, and a sweep
of DPO settings samples once.
"""

from __future__ import annotations

import json
import pathlib

from srit_jax import io, sharding
from srit_jax.configs import checks
from srit_jax.conversion import loading
from srit_jax.data import fingerprint
from srit_jax.phases import demos, phase_time, refine, report, student_answers
from srit_jax.phases import evaluate as evaluation
from srit_jax.phases import sft as sft_loop
from srit_jax.phases.phase import RUN_CONFIG, Phase, other_runs
from srit_jax.planning import fit
from srit_jax.statistics import paired_comparison
from srit_jax.tasks import registry
from srit_jax.tasks.registry import load_examples
from srit_jax.teachers.base import family_of
from srit_jax.teachers.precomputed import question_key
from srit_jax.training import dpo_step

STAGES = ("untuned", "sft", "srit")  # the student before tuning, after SFT, after self-refinement
CONTROL = "control"  # the compute-matched control: the refine rounds with cross-entropy on chosen answers only
COMPARISONS = (("sft", "srit"), ("untuned", "sft"), ("untuned", "srit"))  # (first, second): second − first
CONTROL_COMPARISONS = (("sft", CONTROL), (CONTROL, "srit"))


def _with(block, **fields):
  block = block.copy_and_resolve_references()
  with block.unlocked():
    block.update(fields)
  return block


def run(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  checks.check(config, "pipeline")
  fit.check_fits(config, "pipeline")  # on TPU: every program compiled and checked before any work
  workdir = io.as_path(workdir)
  if io.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
  # The settings of the run started last here: what `srit-jax status` reads its phases from.
  io.write_json(workdir / RUN_CONFIG, json.loads(config.to_json()))
  shared = dict(data_dir=config.data_dir, source=config.source, seed=config.seed)

  # Demonstrations.
  demos_config = _with(config.demos, task=config.train_task, **shared)
  reuse_from = other_runs(config.reuse_phases_from, workdir)
  if config.reuse_phases_from:  # a folder that holds no run yet is fine (a study's first variant), but said
    runs = f"{len(reuse_from)} other run" + ("" if len(reuse_from) == 1 else "s")
    print(f"phases done with the same inputs are taken over from {runs} ({config.reuse_phases_from})")
  demos_phase = Phase(workdir, "demos", demos_config.to_dict(), reuse_from=reuse_from)
  if not demos_phase.done():
    print("[demos] teacher demonstrations")
    summary = demos.run(demos_config, demos_phase.dir, progress=progress)
    demos_phase.finish({"summary": summary})

  # Instruction tuning.
  sft_config = _with(config.sft, model=config.student, train_file=str(demos_phase.dir / "demos.jsonl"), export=True)
  if config.demos.heldout_questions:  # SFT's held-out loss on the demonstrations of questions it never trains on
    sft_config = _with(sft_config, eval_file=str(demos_phase.dir / demos.HELD_OUT_FILE))
  sft_inputs = fingerprint.fingerprinted(sft_config.to_dict(), "sft"), demos_phase.fingerprint
  sft_phase = Phase(workdir, "sft", *sft_inputs, reuse_from=reuse_from)
  if not sft_phase.done():
    print("[sft] instruction tuning on the demonstrations")
    trained = sft_loop.train(sft_config, sft_phase.dir, check_memory=False)
    summary = {"steps_run": trained.steps_run, "selected_step": trained.selected_step}
    del trained  # its train state (the SFT parameters) would stay resident through every later phase
    sft_phase.finish({"summary": summary})

  # Self-refinement, in one or more rounds; and the compute-matched control beside it.
  refine_task = config.refine_task or config.train_task
  refine_phases = _refine_rounds(
    config, workdir, "refine", sft_phase, demos_phase, refine_task, shared, progress, reuse_from=reuse_from
  )
  refine_phase = refine_phases[-1]
  control_phases = []
  if config.control:
    control_phases = _refine_rounds(
      config,
      workdir,
      "refine_control",
      sft_phase,
      demos_phase,
      refine_task,
      shared,
      progress,
      samples_from=refine_phases,
      reuse_from=reuse_from,
    )

  # Evaluation of every stage.
  trained = {"sft": sft_phase, "srit": refine_phase, **({CONTROL: control_phases[-1]} if control_phases else {})}
  trained |= {f"srit_round_{round_}": phase for round_, phase in enumerate(refine_phases[:-1], start=1)}
  made = {"untuned": (config.student, "student")}
  made |= {stage: (str(phase.dir / "export"), phase.fingerprint) for stage, phase in trained.items()}
  models = {stage: made[stage] for stage in evaluated_stages(config)}
  tasks = registry.evaluation_domains(config)
  examples = {
    name: load_examples(
      name,
      None,
      source=config.source,
      data_dir=config.data_dir or None,
      seed=config.seed,
    )
    for name in tasks
  }
  examples, removed = decontaminate(
    examples,
    [demos_phase.dir / "demos.jsonl", *(phase.dir / "pairs.jsonl" for phase in refine_phases + control_phases)],
  )
  examples = {task: items[: config.eval.limit or None] for task, items in examples.items()}
  evaluated_ids = {task: [e.id for e in items] for task, items in examples.items()}
  for task, count in removed.items():
    if count:
      print(f"[eval] {task}: {count} questions also among the training questions, left out")
  results, outcomes, majority_outcomes, sample_outcomes, eval_phases = {}, {}, {}, {}, []
  sampled = evaluation.sampled_answers(config.eval)
  evaluated_here = False  # an evaluation stage ran in this process: the next one runs its programs
  for stage in models:
    model_path, upstream = models[stage]
    stage_tasks = {t: d for t, d in tasks.items() if d == "in-domain"} if stage.startswith("srit_round_") else tasks
    stage_ids = {t: evaluated_ids[t] for t in stage_tasks}
    phase = Phase(
      workdir,
      f"eval/{stage}",
      fingerprint.fingerprinted(config.eval.to_dict(), "eval"),
      stage_tasks,
      stage_ids,
      model_path,
      upstream,
      config.student,
      reuse_from=reuse_from,
    )
    if not phase.done(same_programs_as_last=evaluated_here):
      print(f"[{phase.name}] {model_path}")
      mesh = sharding.mesh_from_config(config.eval.mesh)
      model = loading.load_model(
        model_path,
        mesh=mesh,
        dtype=config.eval.dtype,
        param_dtype=config.eval.dtype,  # evaluation trains nothing: no master weights
        attention=config.eval.attention,
        progress=progress,
      )
      evaluation.evaluate(
        model,
        {task: examples[task] for task in stage_tasks},
        phase.dir,
        styles=["cot"] + (["direct"] if config.eval.direct else []),
        max_new_tokens={"cot": config.eval.max_new_tokens, "direct": config.eval.max_new_tokens_direct},
        batch_size=config.eval.batch_size,
        stop_strings=tuple(config.eval.stop_strings),
        sampled=sampled,
        progress=progress,
      )
      del model  # else it would stay resident while the next stage's model loads
      phase.finish()
      evaluated_here = True
    eval_phases.append(phase)
    results[stage] = json.loads((phase.dir / "summary.json").read_text(encoding="utf-8"))
    outcomes[stage] = {task: evaluation.per_question_outcomes(phase.dir / f"{task}.cot.jsonl") for task in stage_tasks}
    if sampled:
      files = {task: phase.dir / evaluation.SAMPLED_FILE.format(task=task) for task in stage_tasks}
      majority_outcomes[stage] = {task: evaluation.per_question_outcomes(f) for task, f in files.items()}
      sample_outcomes[stage] = {task: evaluation.per_question_samples(f) for task, f in files.items()}

  markers = {p.name: p.recorded() for p in (demos_phase, sft_phase, *refine_phases, *control_phases, *eval_phases)}
  comparisons = list(COMPARISONS) + (list(CONTROL_COMPARISONS) if control_phases else [])
  comparisons += [("sft", stage) for stage in models if stage.startswith("srit_round_")]
  teacher = markers[demos_phase.name]["summary"]
  student_family = config.student_family or family_of(str(config.student))
  out = {
    "student": config.student,
    "student_family": student_family,
    "teacher": teacher["teacher"],
    "teacher_family": teacher["family"],
    "family": "in-family" if teacher["family"] == student_family else "out-family",
    "train_task": config.train_task,
    "refine_task": refine_task,
    "domains": tasks,
    "stages": results,
    "paired": _paired(outcomes, comparisons, tasks, config.seed),
    **({"paired_majority": _paired(majority_outcomes, comparisons, tasks, config.seed)} if sampled else {}),
    **(
      {"paired_sampled": _paired(sample_outcomes, comparisons, tasks, config.seed, evaluation.paired_samples)}
      if sampled
      else {}
    ),
    "teacher_accuracy": teacher["tasks"],
    "pairs": json.loads((refine_phase.dir / "pair_stats.json").read_text(encoding="utf-8")),
    "sft": markers[sft_phase.name].get("summary", {}),  # steps run and kept
    "rounds": [_round_summary(phase.name, markers[phase.name]) for phase in refine_phases],
    "control_rounds": [_round_summary(phase.name, markers[phase.name]) for phase in control_phases],
    "left_out_as_seen_in_training": removed,
    "peak_rss_bytes": {name: marker.get("peak_rss_bytes") for name, marker in markers.items()},
    "seconds": {name: marker.get("seconds") for name, marker in markers.items()},
    # Phases taken over from other runs (reuse_phases_from): their time and memory above are those runs'.
    "taken_over_from": {name: m["taken_over_from"] for name, m in markers.items() if "taken_over_from" in m},
  }
  io.write_json(workdir / "results.json", out)
  table = report.results_markdown(out)
  io.write_text(workdir / "results.md", table + "\n")
  if io.is_writer():
    report.accuracy_chart(out, workdir / "accuracy.png")
    report.training_curves(
      {"sft": sft_phase.dir / "metrics.jsonl", "dpo": refine_phase.dir / "metrics.jsonl"},
      workdir / "training_curves.png",
    )
  print(table)
  peaks = {name: peak for name, peak in out["peak_rss_bytes"].items() if peak}
  if peaks:
    name = max(peaks, key=peaks.get)
    print(f"peak resident memory {peaks[name] / 2**30:.1f} GiB (in {name}; each phase's in results.json)")
  taken_over = out["taken_over_from"]
  took = {name: s for name, s in out["seconds"].items() if s is not None and name not in taken_over}
  if took:
    name = max(took, key=took.get)
    print(
      f"wall time {phase_time.duration(sum(took.values()))} over {len(took)} phases"
      f" (the longest: {name}, {phase_time.duration(took[name])}; each phase's in results.json)"
    )
  if taken_over:
    print(f"taken over from other runs, not run here: {', '.join(taken_over)}")
  print(f"results in {workdir}: results.json, results.md, accuracy.png, training_curves.png")
  return out


def evaluated_stages(config) -> list[str]:
  """The students a run of `config` evaluates, in order: the untuned one where asked, SFT, SRIT,
  the control where trained, and with `eval_rounds` every round but the last (the SRIT stage),
  those in-domain only."""
  stages = (["untuned"] if config.eval_untuned else []) + ["sft", "srit"] + ([CONTROL] if config.control else [])
  if config.eval_rounds:
    stages += [f"srit_round_{round_}" for round_ in range(1, config.refine_iterations)]
  return stages


def _round_name(prefix: str, round_: int) -> str:
  return prefix if round_ == 1 else f"{prefix}_{round_}"


def phase_names(config) -> list[str]:
  """The phase folders a run of `config` makes in its workdir, in the order it makes them."""
  chains = ["refine"] + (["refine_control"] if config.control else [])
  rounds = [_round_name(chain, r) for chain in chains for r in range(1, config.refine_iterations + 1)]
  return ["demos", "sft", *rounds, *(f"eval/{stage}" for stage in evaluated_stages(config))]


def _refine_rounds(
  config, workdir, prefix, sft_phase, demos_phase, task, shared, progress, samples_from=(), reuse_from=()
) -> list[Phase]:
  """The phases WORKDIR/<prefix>, <prefix>_2, ...: `refine_iterations` rounds, each from the student
  the last one left. The control chain (`samples_from` the refined chain) trains on the chosen
  answers only; its first round starts from the refined chain's samples, which it would draw alike."""
  phases = []
  # With LoRA in SFT, every round keeps the student's base and the SFT settings: its policy
  # starts from the previous adapters, its reference is the SFT adapters (or its own start).
  adapted = bool(config.sft.lora.rank)
  output = "export_adapter" if adapted else "export"
  # The reference of rounds after the first: the SFT student where asked; a round's own start
  # (reference_model empty) where asked, and in a refined chain whose loss reads no reference.
  reference_free = not samples_from and config.refine.loss_type in dpo_step.REFERENCE_FREE_PREFERENCE
  own_start = config.refine_reference == "previous" or reference_free
  for round_ in range(1, config.refine_iterations + 1):
    previous = phases[-1] if phases else sft_phase
    refine_config = _with(
      config.refine,
      model=config.student if adapted else str(previous.dir / "export"),
      reference_model="" if round_ == 1 or own_start else str(sft_phase.dir / output),
      task=task,
      demos_file=str(demos_phase.dir / "demos.jsonl"),
      export=True,
      round=round_,
      **shared,
    )
    if samples_from:
      refine_config = _with(
        refine_config,
        loss_type="nll",
        nll_weight=0.0,
        label_smoothing=0.0,
        selection_loss_type="",  # its own: the cross-entropy
        select_checkpoint=config.control_select_checkpoint or refine_config.select_checkpoint,
      )
    if adapted:
      with refine_config.unlocked():
        refine_config.lora = _with(config.sft.lora, init_adapter=str(previous.dir / "export_adapter"))
    name = _round_name(prefix, round_)
    phase = Phase(
      workdir,
      name,
      refine_config.to_dict(),
      previous.fingerprint,
      sft_phase.fingerprint,
      keep=student_answers.SAMPLE_FILES,
      reuse_from=reuse_from,
    )
    if not phase.done():
      if samples_from and round_ == 1:
        io.link_files(samples_from[0].dir, phase.dir, student_answers.SAMPLE_FILES)
      what = {"simpo": "SimPO", "orpo": "ORPO", "dpop": "DPO-Positive"}.get(refine_config.loss_type, "DPO")
      what = "the control: the same pairs, cross-entropy on the chosen answers" if samples_from else what
      print(f"[{name}] self-refinement round {round_}: the student's samples, preference pairs, {what}")
      elsewhere = [other / name for other in reuse_from]  # samples and reference log-probs of the same inputs
      summary = refine.run(refine_config, phase.dir, progress=progress, check_memory=False, made_elsewhere=elsewhere)
      phase.finish({"summary": summary})
    phases.append(phase)
  return phases


def _paired(outcomes: dict, comparisons, tasks, seed: int, compare=paired_comparison) -> dict:
  """Per task, each comparison (first, second) of two evaluated stages: paired statistics of their
  per-question outcomes (second against first), by `compare`."""
  return {
    task: {
      f"{second}_vs_{first}": compare(outcomes[first][task], outcomes[second][task], seed=seed)
      for first, second in comparisons
      if task in outcomes.get(first, {}) and task in outcomes.get(second, {})
    }
    for task in tasks
  }


def _round_summary(name: str, marker: dict) -> dict:
  """A round's pairs, held-out curve and chosen step, from its completion marker."""
  summary = marker["summary"]
  keys = (
    "reference",
    "layout",
    "heldout_before",
    "heldout_after",
    "heldout_curve",
    "selected",
    "num_steps",
    "steps_run",
  )
  return {"phase": name, "pairs": summary["pairs"]["pairs"], **{k: summary.get(k) for k in keys}}


def decontaminate(examples: dict[str, list], training_files) -> tuple[dict[str, list], dict[str, int]]:
  """Evaluation examples whose question (whitespace and case aside) any training file holds are
  left out, so that no stage is scored on a question it was taught."""
  seen = set()
  for path in training_files:
    for _, record in io.read_records(path):
      seen.add(question_key(record.get("question") or record.get("prompt", "")))
      if "prompt" in record:  # pairs hold the whole prompt; its question line is what matters
        seen.add(question_key(record["prompt"].split("Question: ", 1)[-1].split("\n")[0]))
  kept = {task: [e for e in items if question_key(e.question) not in seen] for task, items in examples.items()}
  return kept, {task: len(examples[task]) - len(kept[task]) for task in examples}
