"""Every configs/paper.py variant planned for its slice: per-chip memory of every program.

    python benchmarks/tpu_plan.py                       # all variants; then docs/tpu.md
    python benchmarks/tpu_plan.py --variants=llama2_7b,v5e-8 --variants=llama2_13b,v5e-8,qlora

Compiles, ahead of time on this CPU host, the programs `srit-jax plan` compiles for each
variant (the TPU compiler comes with the tpu extra) and writes benchmarks/results/tpu_plan.json
(kept between runs, so a killed run resumes in the order of `planning_queue`: unplanned
variants first, then those whose rows per step changed since their plans, then those planned
before the time estimate existed, then those whose cost copies were compiled at XLA's default
effort instead of `compiled_figures.COST_ONLY_OPTIONS`) and the tables of docs/tpu.md. Each compiled program's
figures are kept where `srit-jax plan` keeps them (`$SRIT_JAX_CACHE/xla/plan_figures`): a
variant planned again, or resumed after a kill, compiles only the programs it has not compiled.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import app, flags

ROOT = pathlib.Path(__file__).parents[1]
PAPER = ROOT / "srit_jax" / "configs" / "paper.py"
RESULTS = ROOT / "benchmarks" / "results" / "tpu_plan.json"
DOC = ROOT / "docs" / "tpu.md"


def _define_flags() -> None:
  """The script's flags, defined when it runs: importing it (its tables) must not clash with srit_jax.cli's."""
  flags.DEFINE_multi_string("variants", None, "student,slice[,method] to plan (default: every variant)")
  flags.DEFINE_integer("prompt_length", 512, "prompt tokens the samplers are compiled for")
  flags.DEFINE_bool("doc_only", False, "write docs/tpu.md from the stored plans, planning nothing")


def all_variants() -> list[str]:
  """Each student on each slice with its own method, and the other methods on the 8-chip v4 and v5e."""
  from srit_jax.configs import paper

  own = [f"{s},{t}" for s in paper.STUDENTS for t in paper.SLICES]
  extra = [
    f"{s},{t},{m}"
    for s in paper.STUDENTS
    for t in ("v4-8", "v5e-8")
    for m in ("full", "lora", "qlora")
    if paper.SIZES[(s, t)][0] != m
  ]
  return own + extra


HBM_RULE = 0.95  # a variant's largest program stays under this share of a chip's HBM


def rows_the_rule_allows(result: dict) -> int | None:
  """SFT rows per step that keep the training steps under 95% of HBM by the plan's own figures:
  the planned rows doubled while their temporaries, taken to grow with the rows (they grow less:
  part of them is per parameter), fit. None where the planned rows are already over the line."""
  steps = [p for p in result["programs"] if p["name"].startswith(("SFT", "DPO"))]
  limit = HBM_RULE * result["hbm_gb"]
  factor = min((limit - p["total_gb"] + p["temporaries_gb"]) / p["temporaries_gb"] for p in steps)
  if factor < 1:
    return None
  multiple = 1
  while 2 * multiple <= factor:
    multiple *= 2
  return result["sft_rows"] * multiple


ROWS_PER_CHIP = ("full", "lora", "qlora")  # the order of SIZES' rows per chip after the own method


def set_rows_the_rule_allows(variant: str, result: dict, paper_file: pathlib.Path = PAPER) -> str | None:
  """Sets the variant's training rows per chip in configs/paper.py's SIZES to what the 95% rule
  allows by its plan (the own method's entry marked `# planned`, also where its rows already
  are what the rule allows); returns the change, or None where there is none (the rows already
  are, or the planned rows are over the line)."""
  rows = rows_the_rule_allows(result)
  if rows is None:
    return None
  student, slice_name, *_ = variant.split(",")
  key = f'("{student}", "{slice_name}"): ('
  lines = paper_file.read_text().splitlines(keepends=True)
  (index,) = [i for i, line in enumerate(lines) if line.strip().startswith(key)]
  line = lines[index]
  start = line.index(key) + len(key)
  end = line.index(")", start)
  own_method, *per_chip = [field.strip().strip('"') for field in line[start:end].split(",")]
  column = ROWS_PER_CHIP.index(result["method"])
  new = str(rows // result["devices"])
  old = per_chip[column]
  change = f"{variant}: {result['method']} rows per chip {old} -> {new}" if old != new else None
  per_chip[column] = new
  code = line[:start] + ", ".join([f'"{own_method}"', *per_chip]) + line[end:]
  if result["method"] == own_method and "# planned" not in code:
    code = code.rstrip("\n") + "  # planned\n"
  if code == line:
    return None
  lines[index] = code
  paper_file.write_text("".join(lines))
  if paper_file == PAPER:  # the configs of this process follow
    import importlib

    from srit_jax.configs import paper

    importlib.reload(paper)
  return change


def configured_rows(variant: str) -> tuple[int, int, int, int]:
  """(SFT rows, DPO pairs, generation rows, evaluation rows) per step that configs/paper.py gives."""
  from srit_jax import configs

  config = configs.load("paper", variant)
  return config.sft.batch_size, config.refine.batch_size, config.refine.generate_batch_size, config.eval.batch_size


def sizes_changed(variant: str, result: dict) -> bool:
  """Whether configs/paper.py now gives the variant other rows than it was planned with: its
  plan no longer describes the run (it is planned again; until then no time is estimated)."""
  planned = (result["sft_rows"], result["dpo_pairs"], result["generation_rows"], result["eval_rows"])
  return configured_rows(variant) != planned


def cost_copies_compiled_otherwise(result: dict) -> bool:
  """Whether a plan's bounds came from cost copies compiled otherwise than plans compile them now
  (`compiled_figures.COST_ONLY_OPTIONS`): it is planned again, so the time table has one method."""
  from srit_jax.planning import compiled_figures

  return result.get("cost_options") != compiled_figures.COST_ONLY_OPTIONS


def recount(results: dict) -> None:
  """Every stored estimate's calls and hours counted again from configs/paper.py as it is now:
  each program's bound per call stays; how often a run makes it (steps, questions, evaluations)
  follows the config, so a change there needs no compile. A plan made at other rows per step
  than the config's now is left as it was (its bounds per call are of other programs)."""
  from srit_jax import configs
  from srit_jax.planning import run_time

  for variant, result in results.items():
    if not result.get("estimates") or variant not in all_variants() or sizes_changed(variant, result):
      continue
    config = configs.load("paper", variant)
    for estimate in result["estimates"]:
      calls, estimate["assumption"] = run_time.count_calls(
        config, estimate["phase"], estimate["program"], estimate["per_call"]
      )
      estimate["calls"] = calls
      estimate["hours_bound"] = None if calls is None else estimate["seconds_per_call"] * calls / 3600


def plan_variant(variant: str, prompt_length: int) -> dict:
  import jax

  from srit_jax import configs, host_cache
  from srit_jax.configs import paper
  from srit_jax.planning import compiled_figures, programs, run_time, topology

  student, slice_name, *rest = variant.split(",")
  config = configs.load("paper", variant)
  devices, hbm = topology.tpu_devices(slice_name)
  start = time.perf_counter()
  plans = programs.programs(
    config,
    "pipeline",
    devices,
    prompt_length=prompt_length,
    # where `srit-jax plan` keeps them
    figures_cache=compiled_figures.figures_cache_in(host_cache.compilation_cache_dir()),
    progress=lambda line: print(line, flush=True),
  )
  estimates = run_time.run_estimate(config, plans, devices)
  jax.clear_caches()
  method = rest[0] if rest else paper.SIZES[(student, slice_name)][0]
  return {
    "variant": variant,
    "method": method,
    "slice": slice_name,
    "devices": len(devices),
    "hbm_gb": hbm / 1e9,
    "sft_rows": config.sft.batch_size,
    "dpo_pairs": config.refine.batch_size,
    "generation_rows": config.refine.generate_batch_size,
    "eval_rows": config.eval.batch_size,
    "seconds": time.perf_counter() - start,
    "planned": time.strftime("%Y-%m-%d"),
    "cost_options": compiled_figures.COST_ONLY_OPTIONS,  # how the cost copies behind the estimates compiled
    "programs": [
      {
        "phase": p.phase,
        "name": p.name,
        "attention": p.attention,
        "arguments_gb": p.arguments / 1e9,
        "temporaries_gb": p.temporaries / 1e9,
        "outputs_gb": p.outputs / 1e9,
        "aliased_gb": p.aliased / 1e9,
        "total_gb": p.total / 1e9,
        "fits": p.fits(hbm),
        "error": p.error,
        "compile_s": p.compile_seconds,
        **({"compile_host_gb": p.compile_host_bytes / 1e9} if p.compile_host_bytes else {}),
      }
      for p in plans
    ],
    "estimates": [
      {
        "phase": x.phase,
        "program": x.program,
        "seconds_per_call": x.seconds_per_call,
        "calls": x.calls,
        "hours_bound": x.hours,
        "assumption": x.assumption,
        "per_call": x.per_call,
      }
      for x in estimates
    ],
  }


def uncosted_phases(result: dict) -> set[str]:
  """Phases with a program that compiled but has no time bound: its cost copies were refused
  (planned before a refused copy was compiled at a share of its rows)."""
  from srit_jax.planning import run_time

  estimated = {(x["phase"], x["program"]) for x in result.get("estimates") or ()}
  return {
    p["phase"]
    for p in result.get("programs", ())
    if not p.get("error") and (p["phase"], run_time.program_of(p["name"])) not in estimated
  }


def _at_40_percent(hours_at_the_bound: float) -> str:
  return f"{hours_at_the_bound / 0.4:.3g}"


def time_table(results: dict) -> list[str]:
  """Hours per phase and the run's chip-hours of every variant planned with time estimates."""
  timed = [v for v in all_variants() if results.get(v, {}).get("estimates")]
  if not timed:
    return [
      "",
      "## Time and chip-hours",
      "",
      "The planned variants above were planned before the time estimate existed; `srit-jax plan`",
      "prints each program's roofline bound, each phase's hours and the run's chip-hours, and",
      "this table fills as variants are planned again.",
    ]
  lines = [
    "",
    "## Time and chip-hours",
    "",
    "Each program's roofline bound on the slice — its compiled FLOPs at the chip's peak (bfloat16)",
    "or its compiled bytes at full HBM bandwidth, whichever is slower, every layer counted (XLA's",
    "cost analysis counts a loop body once; the plan compiles shallow unrolled copies to count a",
    "layer, at XLA's least effort on their speed: the same FLOPs as at the default effort, bytes",
    "within a few percent, the training steps' in an eighth of the compile time; where those copies,",
    "their output layer over whole rows, need more HBM than the chip has, they are compiled at 1/2,",
    "1/4, ... of the rows until they fit and at half that share again, and the cost is carried to",
    "all the rows: a tiny model's SFT step so gives the whole-row copies' FLOPs to 1e-7 and bytes to",
    "0.1%) — times how often",
    "the config's run makes it: SFT and DPO steps, sampler calls at `max_new_tokens` for every",
    "answer, reference passes over at most `max_pairs_per_question` pairs per question, evaluation",
    "of every stage on every task. Whole splits (`limit` 0) count at the sizes their dataset cards",
    "publish: the paper configs sample all 7,473 GSM8K training questions and evaluate 21,354 test",
    "questions of eight tasks per stage (an upper bound: the teacher's wrong answers and",
    "decontamination only remove questions). The columns are at 40% of the roofline (MFU 40% where",
    "a program is compute-bound): a planning figure, not a measurement. The calls are counted again",
    "from `configs/paper.py` each time this table is written (no compile needed when only steps,",
    "questions or evaluations change). MMLU's 14,042 test questions are two thirds of the 21,354",
    "each stage answers; `--config.eval.limit=N` caps every task at its first N. A run that keeps",
    "its step of lowest held-out loss and stops early (`sft.` or `refine.early_stopping_patience`)",
    "takes at most its training phases' hours; `srit-jax plan` says so beside those steps.",
    "",
    "| variant | chips | SFT h | refine h | eval h | run h | chip-hours | chip-hours at the bound |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  uncounted = replanned = unfit = uncosted = False
  for variant in timed:
    r = results[variant]
    stale = sizes_changed(variant, r)
    replanned |= stale
    hours, unknown = {}, set()
    for x in r["estimates"]:
      if x["hours_bound"] is None:  # how often the program runs depends on a dataset's size
        unknown.add(x["phase"])
      else:
        hours[x["phase"]] = hours.get(x["phase"], 0.0) + x["hours_bound"]
    # A phase with a program that does not fit (✗ in the fit table: out of HBM at compile, or its
    # figures over the chip's HBM) cannot run at these rows: no hours of its own. The run's figures
    # still add every bound there is (a lower bound: the run would take at least that).
    failed = {p["phase"] for p in r.get("programs", ()) if p.get("error") or not p.get("fits", True)}
    unbounded = uncosted_phases(r) - failed
    uncounted |= bool(unknown)
    unfit |= bool(failed)
    uncosted |= bool(unbounded)
    total, chips = sum(hours.values()), r["devices"]
    at_least = "≥ " if unknown or failed or unbounded else ""
    phases = [
      "✗" if p in failed else "?" if p in unbounded else "n/a" if p in unknown else _at_40_percent(hours.get(p, 0))
      for p in ("sft", "refine", "eval")
    ]
    lines.append(
      f"| `{variant}`{' ¹' if stale else ''} | {chips} | {' | '.join(phases)} | {at_least}{_at_40_percent(total)} "
      f"| {at_least}{_at_40_percent(total * chips)} | {at_least}{total * chips:.3g} |"
    )
  if uncounted:
    lines += [
      "",
      "n/a: a phase reads a whole split whose size the plan does not know; the run's figures",
      "then count the other phases only (≥).",
    ]
  if unfit:
    lines += [
      "",
      "✗: one of the phase's programs does not compile on the slice, or does not fit its HBM (at its",
      "rows: ✗ in the table above), so the phase has no hours of its own; the run's figures add the",
      "bounds of every program that has one, that phase's others included (≥).",
    ]
  if uncosted:
    lines += [
      "",
      "?: one of the phase's programs fits, but the shallow copies that count its cost were refused",
      "for lack of HBM when it was planned (they are now compiled at a share of the rows); queued to",
      "be planned again. The run's figures count the other programs only (≥).",
    ]
  if replanned:
    lines += [
      "",
      "¹ At the rows it was planned with (the table above). `configs/paper.py` now gives it more,",
      "at which it is queued to be planned again: SFT then runs the same epochs in fewer, larger",
      "steps, and DPO its 600 steps on more pairs each.",
    ]
  untimed = [v for v in results if not results[v].get("estimates")]
  if untimed:
    planned = "1 variant was" if len(untimed) == 1 else f"{len(untimed)} variants were"
    lines += ["", f"{planned} planned before the time estimate existed."]
  default_effort = [v for v in timed if cost_copies_compiled_otherwise(results[v])]
  if default_effort:
    lines += [
      "",
      f"The bounds of {len(default_effort)} of these variants come from cost copies compiled at XLA's default",
      "effort (planned before the least effort was used; queued to be planned again, which compiles",
      "only the copies).",
    ]
  return lines


def _dates(results: dict) -> str:
  dates = sorted({r["planned"] for r in results.values()})
  return dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def write_doc(results: dict) -> None:
  lines = [
    "# Paper scale on Cloud TPU: what fits",
    "",
    "`configs/paper.py` variants, each of their programs compiled ahead of time for the slice on a",
    "CPU host (libtpu's topology description; nothing ran on a TPU), as `srit-jax plan` prints it.",
    "Per chip, in GB: the largest of the run's programs against the chip's HBM, and each phase's",
    "program. Regenerate with",
    "",
    "    pip install -e '.[tpu]' && python benchmarks/tpu_plan.py",
    "",
    "and check one variant with",
    "",
    "    srit-jax plan --config=configs/paper.py:llama2_13b,v5e-8 --topology=v5e-8",
    "",
    "Both keep each compiled program's figures (`$SRIT_JAX_CACHE/xla/plan_figures`), so planning",
    "again compiles only the programs that changed. A compile needs host memory of its own: a few",
    "GB for most programs, up to about 15 GB for an 8B or 9B model's refine sampler (benchmarks/RESULTS.md).",
    "",
    "Methods: `full` (every parameter trains: float32 master weights, AdamW moments and gradients,",
    "16 bytes a parameter), `lora` (rank-8 adapters over a bfloat16 base), `qlora` (over an NF4",
    "base). Rows: 1024-position SFT rows per step, DPO pairs per step (two rows each), rows per",
    "generation batch. Prompts of 512 tokens; 384 new tokens. The last column: the SFT rows per",
    "step that would keep the training steps under 95% of HBM, the planned rows doubled while",
    "their temporaries, scaled with the rows, fit (they grow less than that: part is per",
    "parameter). `benchmarks/tpu_plan.py` sets each planned variant's rows in `configs/paper.py`",
    "(SIZES: rows per chip of its method) from this column; a variant whose rows changed shows",
    "them as queued and is planned again at them, in the same run, so that its row here describes",
    "the run it configures.",
    "",
    "| variant | method | chips | HBM/chip | SFT rows | DPO pairs | gen rows | SFT step | DPO step | ref. log-probs "
    "| refine sampler | eval sampler | fits | SFT rows under 95% |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
  ]
  for variant in all_variants():
    r = results.get(variant)
    if r is None:
      continue
    by_name = {}
    for p in r["programs"]:
      key = {"SFT": "sft", "DPO": "dpo", "ref": "ref"}.get(p["name"].split()[0], "")
      if p["name"].startswith("reference"):
        key = "ref"
      elif p["name"].startswith("sampler"):
        key = f"{p['phase']}_sampler"
      by_name[key or p["name"]] = p

    def cell(key, by_name=by_name):
      p = by_name.get(key)
      if p is None:
        return "–"
      return f"{p['total_gb']:.1f}" + ("" if p["fits"] else " ✗")

    fits = all(p["fits"] for p in r["programs"])
    allowed = rows_the_rule_allows(r)
    sft_rows = r["sft_rows"]
    if sizes_changed(variant, r):
      sft_rows = f"{sft_rows} (now {configured_rows(variant)[0]}: queued)"
    lines.append(
      f"| `{variant}` | {r['method']} | {r['devices']} | {r['hbm_gb']:.1f} | {sft_rows} | {r['dpo_pairs']} "
      f"| {r['generation_rows']} | {cell('sft')} | {cell('dpo')} | {cell('ref')} | {cell('refine_sampler')} "
      f"| {cell('eval_sampler')} | {'yes' if fits else 'no'} | {allowed or 'over 95% at these rows'} |"
    )
  missing = [v for v in all_variants() if v not in results]
  lines += [
    "",
    f"Planned {_dates(results)} with jax and libtpu of the tpu extra on {platform.machine()} "
    f"({sum(r['seconds'] for r in results.values()) / 60:.0f} minutes of wall time for {len(results)} variants, "
    "on a 2-core host shared with other work).",
    "",
    "What the table shows:",
    "",
    "- The training programs run attention in the splash kernel (1024-position rows): no",
    "  [B, N, T, S] scores are kept; Gemma 2's soft-capped attention too.",
    "- Full fine-tuning keeps 16 bytes a parameter. Llama-2-7B fits it on v4-8 only at one row per",
    "  chip with 98% of HBM in use (row `llama2_7b,v4-8,full`), so its own method there, as on",
    "  v5e-8, is LoRA: a variant trains fully by default only where its largest program stays under",
    "  95% of HBM. On 8 chips of 16 GB, Llama-2-13B trains as QLoRA.",
    "- Under LoRA the largest program is often the refinement sampler (64 rows, 512-token prompts,",
    "  384 new tokens, the KV cache of every row): Gemma-2-9B's, with its 256k vocabulary, is the",
    "  tightest of the planned 8-chip rows.",
    "- No step accumulates gradients over microbatches: the accumulation keeps about two extra",
    "  float32 gradient copies per chip (about 6 GB for a 7B model on v5e-8), which costs more",
    "  than it saves at these sizes.",
    "- Decoding on a mesh gathers one layer's weights at a time (without that, XLA gathered every",
    "  layer ahead of the first: 12 GB more per chip for a 7B model).",
    "",
    "## Spot and preemptible TPUs",
    "",
    "A phase that gets the termination notice (SIGTERM, about 30 s ahead; on a pod JAX's preemption",
    "service makes every host stop at the same step) finishes the step it is in, saves a checkpoint",
    "of that step, waits for the save and exits with status 75; a sampling or evaluation phase",
    "stops after the batch it wrote, and DPO's pass over the frozen reference (its log-probs of every",
    "pair, before the first step) keeps the batches it finished; on one host, a teacher asked over",
    "HTTP lets its requests in flight finish, keeps every answer and asks nothing more. Run the same",
    "command again and it resumes exactly there.",
    "`tpu_scripts/launch.sh --retry N` does that by itself: when the phase exits 75, or the TPU is",
    "no longer READY under it, it waits (`--wait-minutes`, default 120) until the TPU is READY and",
    "relaunches, at most N times. A plain spot VM does not come back by itself; create it as a",
    "queued resource (`gcloud compute tpus queued-resources create ... --spot`), which recreates it,",
    "then run `setup.sh` again before the retry resumes.",
    "",
    "## Where the workdir lives",
    "",
    "On a pod every host reads what process 0 wrote, so the workdir is on Cloud Storage:",
    "`--workdir=gs://BUCKET/RUN` (`setup.sh --bucket BUCKET` checks that every worker can write it).",
    "Checkpoints go through Orbax's own GCS path, which finalises a checkpoint with a commit marker",
    "instead of a rename (through gcsfuse a rename copies every object again: about 84 GB per",
    "checkpoint for a 7B full fine-tune); every other file is written whole as one object; the",
    "exported model is written locally and uploaded once, and a later phase reads models from a",
    "cached local copy (`$SRIT_JAX_CACHE`) fetched again only when an object changed. The workdir",
    "lock is an object created only if absent and refreshed or taken over only at the generation",
    "last seen, so two runs can never both hold it; a preempted VM's lock goes stale a minute",
    "after its last refresh. Data may stay on a read-only gcsfuse mount (`setup.sh --mount-data`)",
    "or be read from `gs://` directly.",
    "",
    "From any machine with read access to the bucket, `srit-jax status --workdir=gs://BUCKET/RUN`",
    "says where the run stands without touching it: whether a live run holds the workdir (a lock",
    "refreshed within the minute), each phase done, under way (lines sampled, the step reached and",
    "the step saved, which is where a preempted run resumes, the held-out loss, and the time to the",
    "last step at the recent pace) or not started (from the config the pipeline recorded in",
    "`run_config.json`).",
    "",
    "## Checking the estimate's method",
    "",
    "No TPU ran here, so the bound was checked against what ran: on one H200 (989 TFLOP/s bf16,",
    "4.8 TB/s), benchmarks/RESULTS.md's SFT step of TinyLlama-1.1B (8 x 2048) takes 0.282 s at MFU",
    "39.7%, so its FLOP bound is 0.112 s and the step runs at 40% of it; the DPO step runs at 44%;",
    "greedy decoding at batch 64 at 35% of its HBM roofline (0.52 ms bound, 1.48 ms measured). The",
    "40% column is therefore what these programs reached on a GPU; on TPU they may do better.",
  ]
  if missing:
    minutes = sorted(r["seconds"] / 60 for r in results.values())
    lines += [
      "",
      f"Not planned yet ({len(missing)} variants; a variant took {minutes[0]:.0f} to {minutes[-1]:.0f} minutes "
      "of wall time to plan on a 2-core host, the longest beside other work or paused for it):",
      "their rows per step in `configs/paper.py` (SIZES) are estimates from the planned rows of the",
      "same slice and method. Plan one with `python benchmarks/tpu_plan.py --variants=STUDENT,SLICE[,METHOD]`",
      "or `srit-jax plan` as above: " + ", ".join(f"`{v}`" for v in missing) + ".",
    ]
  spot = lines.index("## Spot and preemptible TPUs")
  lines[spot - 1 : spot - 1] = time_table(results)  # after what fits: how long it takes
  DOC.parent.mkdir(parents=True, exist_ok=True)
  DOC.write_text("\n".join(lines) + "\n")


def _save(results: dict) -> None:
  """The plans and docs/tpu.md from them, after the recount and after every variant planned."""
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(json.dumps(results, indent=2) + "\n")
  write_doc(results)


def planning_queue(results: dict) -> list[str]:
  """What to plan: the unplanned variants first, then those whose rows changed since their plan,
  then those planned without bounds per call (or without one program's), then those whose bounds came from cost copies
  compiled otherwise than the planner compiles them now (one method for every row of the table)."""
  queue = [v for v in all_variants() if v not in results]
  queue += [v for v in all_variants() if v in results and sizes_changed(v, results[v])]
  queue += [v for v in all_variants() if v in results and v not in queue and not results[v].get("estimates")]
  queue += [v for v in all_variants() if v in results and v not in queue and uncosted_phases(results[v])]
  queue += [v for v in all_variants() if v in results and v not in queue and cost_copies_compiled_otherwise(results[v])]
  return queue


def main(argv):
  del argv
  from srit_jax import host_memory

  host_memory.fewer_malloc_arenas()  # as the command line does, before XLA starts its threads
  options = flags.FLAGS
  results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
  recount(results)
  _save(results)
  given = list(options.variants or [])
  planned_here = set()  # (variant, rows): each planned once a run

  def next_variant() -> str | None:
    """--variants in order; else the queue, taken again after each plan: a variant whose rows the
    rule has just raised is planned again at them (after the unplanned ones)."""
    if options.doc_only:
      return None
    if options.variants:
      return given.pop(0) if given else None
    queue = [v for v in planning_queue(results) if (v, configured_rows(v)) not in planned_here]
    return queue[0] if queue else None

  while variant := next_variant():
    planned_here.add((variant, configured_rows(variant)))
    print(f"planning {variant}", flush=True)
    results[variant] = plan_variant(variant, options.prompt_length)
    change = set_rows_the_rule_allows(variant, results[variant])
    _save(results)
    worst = max(results[variant]["programs"], key=lambda p: p["total_gb"])
    print(
      f"  {results[variant]['seconds']:.0f} s; largest {worst['name'][:40]} {worst['total_gb']:.2f} GB "
      f"of {results[variant]['hbm_gb']:.2f}; fits: {all(p['fits'] for p in results[variant]['programs'])}"
      + (f"; configs/paper.py: {change} (the 95% rule; queued to be planned again)" if change else ""),
      flush=True,
    )
  print(DOC)


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  _define_flags()
  app.run(main)
