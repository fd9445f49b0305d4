"""`srit-jax plan`: programs compiled ahead of time for a TPU slice on this CPU host (libtpu from
the tpu extra), a fitting table for a tiny model, a named shortfall for an oversized one, and
one-line errors for topologies, meshes and batches that cannot be."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_PIPELINE_CONFIG, requires_libtpu

ROOT = pathlib.Path(__file__).parents[1]


def _plan(*args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # compile for the TPU topology; run nothing
  return subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", "plan", *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def _tables(stdout: str) -> list[list[list[str]]]:
  """Each markdown table printed, as its rows of cells (header and rule left out)."""
  tables, rows = [], None
  for line in stdout.splitlines():
    if line.startswith("|"):
      if rows is None:
        rows = []
        tables.append(rows)
      if not line.startswith("|---"):
        rows.append([c.strip() for c in line.strip("|").split("|")])
    else:
      rows = None
  return [table[1:] for table in tables]


def _rows(stdout: str) -> list[list[str]]:
  """The fitting table: a row per program."""
  return _tables(stdout)[0]


@requires_libtpu
def test_a_tiny_pipeline_fits_a_v5e_8_with_each_programs_time_and_the_runs_chip_hours(tiny_with_tokenizer, tmp_path):
  args = (f"--config={TINY_PIPELINE_CONFIG}", f"--config.student={tiny_with_tokenizer}", "--topology=v5e-8")
  result = _plan(*args, f"--compilation_cache={tmp_path}")  # an empty cache: every program compiled here
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert result.stdout.startswith("planning pipeline for v5e-8 (8 devices, TPU v5 lite)")
  assert "E0000" not in result.stderr and "could not determine TPU" not in result.stderr  # libtpu kept quiet
  rows = _rows(result.stdout)
  assert [(r[0], r[1].split(" (")[0]) for r in rows] == [
    ("sft", "SFT step"),
    ("refine", "sampler"),
    ("refine", "DPO step"),
    ("refine", "reference log-probs"),
    ("eval", "sampler"),
  ]
  assert all(r[8] == "yes" and float(r[7]) > 0 for r in rows)
  assert rows[0][2] == "splash"  # 128-position rows on TPU: the splash kernel
  assert "every program fits" in result.stdout
  # Each compile's host memory at its peak: in its progress line and the table, the largest named.
  host_gb = [float(r[-1]) for r in rows]
  assert all(0.1 < gb < 24 for gb in host_gb) and result.stdout.count("GB of host memory at most") == 15
  assert result.stdout.count("compiled in") == 15
  largest = re.search(r"host memory: the largest compile, (\w+) (.+), held ([\d.]+) GB at its peak", result.stdout)
  assert largest and float(largest[3]) == max(host_gb), result.stdout
  assert [largest[1], largest[2], largest[3]] in [[r[0], r[1], r[-1]] for r in rows]

  # The time table: the same programs, each with its bound per call, its calls and their hours.
  assert "time on 8 chips: roofline bounds" in result.stdout
  times = _tables(result.stdout)[1]
  assert [(r[0], r[1].split(" (")[0]) for r in times] == [(r[0], r[1].split(" (")[0]) for r in rows]
  sft = times[0]
  assert sft[3] == "3" and float(sft[4]) * 3600 == pytest.approx(3 * float(sft[2]), rel=0.01)  # 3 steps
  assert float(sft[6]) == pytest.approx(float(sft[5]) * 8, rel=0.01)  # chip-hours: hours x chips
  assert all(float(r[2]) > 0 and float(r[5]) > float(r[4]) for r in times)  # 40% of the bound takes longer
  assert "chip-hours (bound" in result.stdout

  # Planned again (another process): every program's figures read back, none compiled; each of
  # its 15 compiles (a program and its two shallow copies) said so as it ended.
  again = _plan(*args, f"--compilation_cache={tmp_path}")
  assert again.returncode == 0, again.stdout + again.stderr[-3000:]
  assert again.stdout.count(": figures read back\n") == 15 and "compiled in" not in again.stdout, again.stdout
  assert "  sft SFT step: figures read back\n  sft SFT step, 1 unrolled layer (for its cost)" in again.stdout
  assert all(r[-2].endswith("(cached)") for r in _rows(again.stdout)), again.stdout
  assert [r[:-2] + r[-1:] for r in _rows(again.stdout)] == [r[:-2] + r[-1:] for r in rows]  # host memory kept too
  assert _tables(again.stdout)[1] == times


@pytest.mark.slow
@requires_libtpu
def test_a_reference_free_loss_plans_no_reference_and_a_step_without_one(tiny_with_tokenizer):
  args = (f"--config={TINY_PIPELINE_CONFIG}", f"--config.student={tiny_with_tokenizer}", "--topology=v5e-8")
  # The refine phase's programs alone, without their cost copies (the other phases plan as with DPO).
  result = _plan(
    *args, "--phase=refine", "--notime", "--config.refine.loss_type=orpo", "--config.refine.nll_weight=1.0"
  )
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  names = [(r[0], r[1]) for r in _rows(result.stdout)]
  assert [(phase, name.split(" (")[0]) for phase, name in names] == [("refine", "sampler"), ("refine", "DPO step")]
  assert "(no reference;" in names[1][1]  # and no reference pass


@pytest.mark.long  # 3 minutes; the tiny pipeline's plan compiles every kind of program
@requires_libtpu
def test_a_paper_variant_fits_its_slice():
  """A paper-scale training step as `plan` sees it: Mistral-7B's SFT step (full fine-tuning, 32
  rows of 1024 positions per chip, splash attention) compiled for v5p-8 fits its chips, 62 of
  103 GB. Its sampler, DPO step and reference pass compile alike (about 200 s more on this
  2-core CPU; the tiny pipeline's plan has every kind of program), and every phase of every
  variant is planned by benchmarks/tpu_plan.py (docs/tpu.md)."""
  result = _plan("--config=configs/paper.py:mistral_7b,v5p-8", "--topology=v5p-8", "--phase=sft", "--notime")
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  rows = _rows(result.stdout)
  assert [(r[0], r[1]) for r in rows] == [("sft", "SFT step")]
  assert "time on" not in result.stdout  # --notime: no shallow copies compiled
  assert rows[0][2] == "splash" and rows[0][8] == "yes" and float(rows[0][7]) > 20  # gigabytes
  assert "every program fits" in result.stdout


@requires_libtpu
def test_an_oversized_step_is_named_with_its_shortfall_and_what_would_fit(tiny_with_tokenizer):
  result = _plan(
    "--config=configs/sft.py",
    f"--config.model={tiny_with_tokenizer}",
    "--config.batch_size=4096",
    "--config.max_length=2048",
    "--config.attention=xla",  # scores kept for the backward pass
    "--topology=v5e-8",
  )
  assert result.returncode == 1, result.stdout + result.stderr[-3000:]
  assert "does not fit:" in result.stdout
  shortfalls = result.stdout.split("does not fit:")[1].splitlines()
  line = next(line for line in shortfalls if line.strip().startswith("sft SFT step"))
  assert "of 16.91 GB" in line and "would fit with:" in line
  assert "num_microbatches=" in line and "remat_policy=full" in line


@requires_libtpu
def test_on_a_tpu_a_training_phase_refuses_a_step_that_cannot_fit_before_any_work(tiny_with_tokenizer, monkeypatch):
  """`fit.check_fits`, which `sft`, `refine` and `pipeline` run first on a TPU: the local devices
  here stand in for a v5e-8's (compile-only) chips."""
  import jax

  from srit_jax import configs
  from srit_jax.planning import fit, topology

  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  monkeypatch.setattr(fit, "plan_devices", lambda name: topology.tpu_devices("v5e-8"))
  config = configs.load("sft")
  config.model = str(tiny_with_tokenizer)
  config.max_length = 2048
  config.attention = "xla"  # scores kept for the backward pass
  fit.check_fits(config, "sft")  # 8 rows of 2048 fit: nothing said

  config.batch_size = 4096
  with pytest.raises(fit.PlanError) as refused:
    fit.check_fits(config, "sft")
  message = str(refused.value)
  assert message.startswith("programs that do not fit this slice:\nsft SFT step"), message
  assert "of 16.91 GB" in message and "num_microbatches=" in message
  assert "| sft | SFT step" in message  # the plan's table follows


@requires_libtpu
def test_an_sft_with_a_held_out_loss_plans_its_forward_pass_beside_the_step(tiny_with_tokenizer):
  from srit_jax import configs
  from srit_jax.planning import program_plan, programs, topology
  from srit_jax.training import flops

  devices, hbm = topology.tpu_devices("v5e-8")
  config = configs.load("sft")
  config.update(model=str(tiny_with_tokenizer), max_length=256, heldout_fraction=0.2)
  plan = lambda: programs.programs(config, "sft", devices, prompt_length=64, cost=False)
  assert [p.name for p in plan()] == ["SFT step"]  # held out, but never evaluated (eval_every 0)
  config.eval_every = 2
  step, held_out = plan()
  assert held_out.name == "SFT held-out loss" and held_out.per_call == config.batch_size
  assert 0 < held_out.total < step.total <= hbm  # the parameters alone: no gradients, no optimizer state
  assert held_out.arguments < step.arguments / 2 and held_out.temporaries < step.temporaries
  model_config = program_plan.block_model_config(config, config.model)
  assert held_out.model_flops == pytest.approx(flops.forward_flops(model_config, 8, 256) / 8)
  assert held_out.compiled_flops > 0


def test_what_would_make_a_program_fit_follows_what_the_program_is():
  import ml_collections

  from srit_jax.planning import fit, program_plan

  gb = fit.GB
  block = ml_collections.ConfigDict(dict(batch_size=64, num_microbatches=1, remat_policy="none", chunk_size=128))
  too_big = lambda phase, name: program_plan.ProgramPlan(phase, name, "splash", arguments=4 * gb, temporaries=36 * gb)
  # 16 GB of HBM, 4 of them the arguments: the temporaries need 3x the room.
  step = fit.suggestions(too_big("sft", "SFT step"), 16 * gb, block)
  assert step == ["num_microbatches=4 (temporaries scale with the microbatch)", "remat_policy=full "
                  "(recompute each layer in the backward pass)", "batch_size=10 or lower"]  # fmt: skip
  for phase, name in (("sft", "SFT held-out loss"), ("refine", "reference log-probs (64 pairs)")):
    forward = fit.suggestions(too_big(phase, name), 16 * gb, block)  # no backward pass to recompute or split
    assert forward == ["batch_size=10 or lower", "chunk_size=64 (positions of logits at a time)"], name
  assert fit.suggestions(too_big("refine", "sampler (64 rows)"), 16 * gb, block) == [
    "a smaller generate_batch_size, or shorter prompts / max_new_tokens"
  ]
  assert fit.suggestions(too_big("eval", "sampler (64 rows)"), 16 * gb, block)[0].startswith("a smaller batch_size,")
  (alone,) = fit.suggestions(too_big("sft", "SFT step"), 3 * gb, block)
  assert alone.startswith("its arguments alone (parameters, optimizer state, reference) need 4.0 GB per chip")


@pytest.mark.parametrize(
  "args,message",
  [
    (["--topology=v9-8"], "unknown topology 'v9-8'; slices: v4-8"),
    (["--topology=v5e-8", "--config.mesh.data=3", "--config.mesh.fsdp=-1"], "8 devices cannot be split"),
    (["--topology=v4-8", "--config.batch_size=6"], "does not divide over the mesh's data x fsdp = 4 devices"),
  ],
)
@requires_libtpu
def test_impossible_topologies_meshes_and_batches_are_one_line_errors(tiny_with_tokenizer, args, message):
  result = _plan("--config=configs/sft.py", f"--config.model={tiny_with_tokenizer}", *args, timeout=120)
  assert result.returncode == 2, result.stdout + result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert "Traceback" not in result.stderr


@requires_libtpu
def test_a_step_time_bound_is_its_cost_analysis_against_the_chips_peaks():
  import jax
  import jax.numpy as jnp

  from srit_jax.planning import compiled_figures, topology

  devices, _ = topology.tpu_devices("v5e-8")
  mesh = jax.sharding.Mesh(np.array(devices).reshape(8), ("rows",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
  whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  a = jax.ShapeDtypeStruct((8 * 256, 1024), jnp.bfloat16, sharding=rows)
  b = jax.ShapeDtypeStruct((1024, 4096), jnp.bfloat16, sharding=whole)
  compiled = jax.jit(lambda a, b: a @ b, out_shardings=rows).lower(a, b).compile()
  cost = compiled_figures.xla_cost(compiled)
  # By hand, per chip: 256 x 1024 x 4096 multiply-adds; at least the operands read and the product
  # written once (XLA counts what its tiled program touches, which is more).
  assert cost.flops == pytest.approx(2 * 256 * 1024 * 4096, rel=0.01)
  assert cost.bytes >= 2 * (256 * 1024 + 1024 * 4096 + 256 * 4096)
  peak, bandwidth = topology.peaks(devices[0])
  assert (peak, bandwidth) == (197e12, 0.819e12)
  assert cost.seconds(peak, bandwidth) == max(cost.flops / peak, cost.bytes / bandwidth)


@requires_libtpu
def test_the_scanned_layer_correction_matches_an_unrolled_compile(tiny_with_tokenizer):
  import dataclasses

  from srit_jax import configs
  from srit_jax.planning import compiled_figures, cost_model, program_plan, topology, training_programs

  block = configs.load("sft", "tiny")
  block.model, block.batch_size, block.num_microbatches = str(tiny_with_tokenizer), 16, 2
  devices, _ = topology.tpu_devices("v5e-8")
  model_config = program_plan.block_model_config(block, block.model)
  build = training_programs.sft_build(block, devices)
  scanned = compiled_figures.xla_cost(build(model_config)[0]().compile())
  corrected = cost_model.extrapolated_cost(build, model_config)
  # Every layer unrolled, whole rows and one pass: nothing under a loop, so XLA counts it all.
  unrolled = dataclasses.replace(model_config, scan_unroll=model_config.num_layers)
  truth = compiled_figures.xla_cost(build(unrolled, whole_rows=True)[0]().compile())
  assert model_config.num_layers == 3 and scanned.flops < 0.75 * truth.flops  # the scan hides layers
  assert corrected.flops == pytest.approx(truth.flops, rel=0.02)
  assert corrected.bytes == pytest.approx(truth.bytes, rel=0.1)


@requires_libtpu
def test_cost_copies_too_large_for_the_chip_are_carried_from_shares_of_the_rows(tiny_with_tokenizer):
  """Where the whole-row copies are refused for lack of HBM, the copies at 1/2 and 1/4 of the
  rows give the cost of all of them: what the whole-row copies count, within the method's
  tolerance (FLOPs are linear in the rows; bytes nearly so)."""
  from srit_jax import configs
  from srit_jax.planning import compiled_figures, cost_model, program_plan, topology, training_programs

  compiled = []

  class WholeRowsRefused(compiled_figures.Compiling):
    def figures(self, lower, arguments, what, compiler_options=None):
      compiled.append(what)
      if what.endswith(" layer (for its cost)") or what.endswith(" layers (for its cost)"):
        return compiled_figures.Compiled(temporaries=2**40, error="RESOURCE_EXHAUSTED: Ran out of memory on HBM")
      return super().figures(lower, arguments, what, compiler_options)

  block = configs.load("sft", "tiny")
  block.model, block.batch_size = str(tiny_with_tokenizer), 32
  devices, _ = topology.tpu_devices("v5e-8")
  model_config = program_plan.block_model_config(block, block.model)
  build = training_programs.sft_build(block, devices)
  carried = cost_model.extrapolated_cost(build, model_config, WholeRowsRefused(), "SFT step")
  truth = cost_model.extrapolated_cost(build, model_config)
  assert [c.split(", ", 1)[1] for c in compiled] == [
    "1 unrolled layer (for its cost)",
    "1 unrolled layer, 1/2 of the rows (for its cost)",
    "2 unrolled layers, 1/2 of the rows (for its cost)",
    "1 unrolled layer, 1/4 of the rows (for its cost)",
    "2 unrolled layers, 1/4 of the rows (for its cost)",
  ]
  assert carried.flops == pytest.approx(truth.flops, rel=1e-6)
  assert carried.bytes == pytest.approx(truth.bytes, rel=0.01)
  half = cost_model.extrapolated_cost(lambda cfg, whole_rows, share: build(cfg, whole_rows, 2 * share), model_config)
  assert half.flops < 0.6 * truth.flops  # the shares are of the rows: half of them, about half the work


@requires_libtpu
def test_a_plan_without_time_compiles_each_program_once(tiny_with_tokenizer, monkeypatch):
  """`--notime` and the fit check before a TPU run need memory only: no shallow copies."""
  from srit_jax import configs
  from srit_jax.planning import cost_model, programs, topology

  block = configs.load("sft", "tiny")
  block.model, block.batch_size = str(tiny_with_tokenizer), 8
  devices, _ = topology.tpu_devices("v5e-8")
  shallow = []
  real = cost_model.shallow
  monkeypatch.setattr(cost_model, "shallow", lambda *a: shallow.append(a[1]) or real(*a))
  (plan,) = programs.programs(block, "sft", devices, prompt_length=16, cost=False)
  assert plan.total > 0 and not plan.error and plan.cost is None and shallow == []
  (plan,) = programs.programs(block, "sft", devices, prompt_length=16)
  assert plan.cost is not None and shallow == [1, 2]


@requires_libtpu
def test_the_cost_copies_compile_at_the_least_effort_and_count_what_the_default_effort_counts(
  tiny_with_tokenizer, tmp_path, monkeypatch
):
  """The shallow copies are compiled only for XLA's cost, with `COST_ONLY_OPTIONS` (a fraction
  of the compile time at paper scale); the program itself, whose memory the plan reads, at the
  default effort. Their FLOPs are the default effort's; bytes within the method's tolerance."""
  from srit_jax import configs
  from srit_jax.planning import compiled_figures, cost_model, program_plan, programs, topology, training_programs

  block = configs.load("sft", "tiny")
  block.model, block.batch_size = str(tiny_with_tokenizer), 16
  devices, _ = topology.tpu_devices("v5e-8")
  compiled_with = []
  real = compiled_figures.compile_figures
  monkeypatch.setattr(
    compiled_figures,
    "compile_figures",
    lambda *a, **k: compiled_with.append(a[3] if len(a) > 3 else None) or real(*a, **k),
  )
  programs.programs(block, "sft", devices, prompt_length=16, figures_cache=tmp_path)
  assert compiled_with == [None, compiled_figures.COST_ONLY_OPTIONS, compiled_figures.COST_ONLY_OPTIONS]
  assert len(list(tmp_path.glob("*.json"))) == 3

  model_config = program_plan.block_model_config(block, block.model)
  lower, arguments = training_programs.sft_build(block, devices)(cost_model.shallow(model_config, 2), whole_rows=True)
  least = real(lower, arguments, tmp_path, compiled_figures.COST_ONLY_OPTIONS)
  default = real(lower, arguments, tmp_path)
  assert least.cached and not default.cached  # the options are part of the figures' key
  assert least.cost.flops == pytest.approx(default.cost.flops, rel=1e-3)
  assert least.cost.bytes == pytest.approx(default.cost.bytes, rel=0.1)


def test_plans_whose_cost_copies_compiled_otherwise_are_planned_again_last():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  from srit_jax.planning import compiled_figures

  first, second, *rest = tpu_plan.all_variants()
  timed = {"devices": 4, "estimates": [{"phase": "sft", "program": "SFT step"}]}
  results = {
    first: {**timed, **_planned_at(tpu_plan, first)},  # cost copies at the default effort
    second: {**timed, **_planned_at(tpu_plan, second), "cost_options": dict(compiled_figures.COST_ONLY_OPTIONS)},
  }
  assert tpu_plan.planning_queue(results) == [*rest, first]


def test_a_second_plan_of_a_program_reads_its_figures_without_compiling(tiny_with_tokenizer, tmp_path, monkeypatch):
  """JAX cannot load a program compiled for a slice it is not on, so the plan keeps each
  program's figures by the lowered program's hash: the same program on the same devices is read
  back, other devices are compiled; a refusal for lack of memory is kept, any other is not. Each
  compile gives the compiler's freed memory back to the system; a read-back compiles nothing."""
  import jax
  import jax.stages

  from srit_jax import configs, host_memory
  from srit_jax.planning import programs

  trims = []
  real_trim = host_memory.trim
  monkeypatch.setattr(host_memory, "trim", lambda: trims.append(1) or real_trim())
  block = configs.load("sft", "tiny")
  block.model, block.batch_size = str(tiny_with_tokenizer), 8
  plan = lambda devices: programs.programs(block, "sft", devices, prompt_length=16, figures_cache=tmp_path)[0]
  first = plan(jax.devices()[:1])
  assert not first.cached and not first.error and first.cost is not None
  assert len(list(tmp_path.glob("*.json"))) == 3  # the program and its two shallow copies
  assert len(trims) == 3

  def refuse(message):
    def compile(self, *args, **kwargs):
      raise RuntimeError(message)

    monkeypatch.setattr(jax.stages.Lowered, "compile", compile)

  refuse("compiled again")
  again = plan(jax.devices()[:1])
  assert again.cached and not again.error and len(trims) == 3
  assert first.compile_host_bytes > 0
  fields = ("arguments", "temporaries", "outputs", "aliased", "compiled_flops", "compile_seconds", "compile_host_bytes")
  for field in (*fields, "cost"):
    assert getattr(again, field) == getattr(first, field), field

  other = plan(jax.devices()[:2])  # other devices: another program
  assert other.error == "compiled again" and not other.cached
  assert len(list(tmp_path.glob("*.json"))) == 3  # a failure that may not recur is not kept

  refuse("RESOURCE_EXHAUSTED: Ran out of memory; used 20.00G of 15.75G hbm. HLO temporaries (12.50G).")
  refused = plan(jax.devices()[:2])
  assert refused.temporaries == int(12.5 * 2**30) and refused.cost is None and not refused.cached
  refuse("compiled again")
  assert plan(jax.devices()[:2]).cached and plan(jax.devices()[:2]).temporaries == refused.temporaries


def _planned_at(tpu_plan, variant: str, rows=None) -> dict:
  """A stored plan's rows: the config's (or `rows`)."""
  keys = ("sft_rows", "dpo_pairs", "generation_rows", "eval_rows")
  return dict(zip(keys, rows or tpu_plan.configured_rows(variant)))


def test_the_time_table_says_which_phases_it_could_not_count():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  variant = tpu_plan.all_variants()[0]
  estimates = [
    {"phase": phase, "program": "p", "seconds_per_call": 1.0, "calls": None, "hours_bound": hours, "assumption": ""}
    for phase, hours in (("sft", 0.2), ("refine", None), ("eval", 0.1))
  ]
  results = {variant: {"devices": 4, "estimates": estimates, **_planned_at(tpu_plan, variant)}}
  (row,) = [line for line in tpu_plan.time_table(results) if line.startswith(f"| `{variant}`")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  # SFT 0.2 h and eval 0.1 h at the bound, at 40% of it; refine uncounted; the run at least their sum
  assert cells[2:] == ["0.5", "n/a", "0.25", "≥ 0.75", "≥ 3", "≥ 1.2"]


def test_plans_time_report_counts_a_phase_whose_calls_are_open_as_at_least():
  from srit_jax.planning import run_time

  estimates = [
    run_time.Estimate("sft", "SFT step", 3.6, None, "1.5 epochs: the steps follow from the packed examples"),
    run_time.Estimate("refine", "DPO step", 3.6, 100),  # 0.1 h at the bound, 0.25 h at 40%
  ]
  report = run_time.estimate_report(estimates, chips=8)
  assert "| sft | SFT step | 3.6 | ? | ? | ? | ? | 1.5 epochs" in report
  assert "at 40%: refine 0.25 h; the run ≥ 0.25 h, ≥ 2 chip-hours (bound ≥ 0.1 h, ≥ 0.8 chip-hours)" in report
  assert "without the programs of sft" in report
  estimates[0].calls = 100  # every count known: exact figures
  assert "≥" not in run_time.estimate_report(estimates, chips=8)


def test_plans_time_report_gives_no_hours_to_a_program_that_does_not_fit(monkeypatch):
  from srit_jax.planning import run_time
  from srit_jax.planning.compiled_figures import Cost
  from srit_jax.planning.program_plan import ProgramPlan

  def plan(phase, name, temporaries, error=""):
    cost = Cost(flops=1e12, bytes=0.0)
    return ProgramPlan(phase, name, "xla", temporaries=temporaries, error=error, cost=cost)

  plans = [plan("sft", "SFT step (8 rows)", 10), plan("refine", "DPO step (8 pairs)", 30)]
  monkeypatch.setattr(run_time, "count_calls", lambda *_: (100, ""))  # 100 calls of each program
  monkeypatch.setattr(run_time.topology, "peaks", lambda _: (1e12, 1e12))  # 1 s a call at the bound
  fitting = run_time.run_estimate(None, plans, ["chip"], hbm=40)
  over = run_time.run_estimate(None, plans, ["chip"], hbm=20)  # the DPO step needs 30 of 20 bytes
  refused = run_time.run_estimate(None, [plans[0], plan("refine", "DPO step", 0, error="out of HBM")], ["chip"])
  assert [e.fits for e in fitting] == [True, True] and "✗" not in run_time.estimate_report(fitting, chips=8)
  for estimates in (over, refused):
    assert [e.fits for e in estimates] == [True, False]
    report = run_time.estimate_report(estimates, chips=8)
    # 100 calls of 1 s: 0.0278 h a program at the bound; the DPO step's row and phase get ✗, not hours
    assert "| refine | DPO step | 1 | 100 | ✗ | ✗ | ✗ |" in report
    assert "at 40%: sft 0.0694 h, refine ✗; the run ≥ 0.139 h" in report
    assert "does not fit the slice" in report


def test_the_time_table_bounds_no_phase_whose_program_did_not_compile():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  variant = tpu_plan.all_variants()[0]
  estimates = [
    {"phase": phase, "program": "p", "seconds_per_call": 1.0, "calls": 1, "hours_bound": hours, "assumption": ""}
    for phase, hours in (("refine", 0.2), ("eval", 0.1))
  ]
  programs = [
    {"phase": "sft", "name": "SFT step", "error": "RESOURCE_EXHAUSTED: Ran out of memory on HBM"},
    {"phase": "eval", "name": "p (32 rows)", "error": ""},
  ]
  results = {variant: {"devices": 4, "estimates": estimates, "programs": programs, **_planned_at(tpu_plan, variant)}}
  table = tpu_plan.time_table(results)
  (row,) = [line for line in table if line.startswith(f"| `{variant}`")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  # SFT's step did not compile: no hours for it, and the run's figures are at least the others'
  assert cells[2:] == ["✗", "0.5", "0.25", "≥ 0.75", "≥ 3", "≥ 1.2"]
  assert any(line.startswith("✗: one of the phase's programs does not compile") for line in table)


def test_the_time_table_bounds_no_phase_whose_program_compiled_over_the_chips_hbm():
  """A program XLA compiled whose figures are over the chip's HBM (✗ in the fit table) leaves its
  phase without hours of its own, as one that did not compile does; the run's figures stay at
  least the sum of every bound."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  variant = tpu_plan.all_variants()[0]
  estimates = [
    {"phase": phase, "program": "p", "seconds_per_call": 1.0, "calls": 1, "hours_bound": hours, "assumption": ""}
    for phase, hours in (("sft", 0.2), ("refine", 0.4), ("eval", 0.1))
  ]
  programs = [
    {"phase": "sft", "name": "p (8 rows)", "error": "", "fits": True},
    {"phase": "refine", "name": "p (16 rows)", "error": "", "fits": False},
    {"phase": "eval", "name": "p (32 rows)", "error": "", "fits": True},
  ]
  results = {variant: {"devices": 4, "estimates": estimates, "programs": programs, **_planned_at(tpu_plan, variant)}}
  table = tpu_plan.time_table(results)
  (row,) = [line for line in table if line.startswith(f"| `{variant}`")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  # refine marked, not timed; the run at least SFT's 0.2 h, refine's 0.4 h and eval's 0.1 h
  assert cells[2:] == ["0.5", "✗", "0.25", "≥ 1.75", "≥ 7", "≥ 2.8"]
  legend = "✗: one of the phase's programs does not compile on the slice, or does not fit its HBM"
  assert any(line.startswith(legend) for line in table)


def test_a_phase_whose_program_has_no_bound_is_marked_and_the_variant_planned_again():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  variant = tpu_plan.all_variants()[0]
  estimates = [
    {"phase": phase, "program": program, "seconds_per_call": 1.0, "calls": 1, "hours_bound": hours, "assumption": ""}
    for phase, program, hours in (("refine", "sampler", 0.2), ("eval", "sampler", 0.1))
  ]
  # The SFT step and the DPO step fit, but their cost copies were refused: no bound for either.
  programs = [
    {"phase": phase, "name": name, "error": ""}
    for phase, name in (
      ("sft", "SFT step"),
      ("refine", "sampler (32 rows, 512-token prompts)"),
      ("refine", "DPO step (reference precomputed)"),
      ("eval", "sampler (32 rows, 512-token prompts)"),
    )
  ]
  result = {"devices": 4, "estimates": estimates, "programs": programs, **_planned_at(tpu_plan, variant)}
  assert tpu_plan.uncosted_phases(result) == {"sft", "refine"}
  table = tpu_plan.time_table({variant: result})
  (row,) = [line for line in table if line.startswith(f"| `{variant}`")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[2:] == ["?", "?", "0.25", "≥ 0.75", "≥ 3", "≥ 1.2"]
  assert any(line.startswith("?: one of the phase's programs fits") for line in table)
  from srit_jax.planning import compiled_figures

  result["cost_options"] = dict(compiled_figures.COST_ONLY_OPTIONS)
  assert variant in tpu_plan.planning_queue({variant: result})
  del programs[0], programs[1]  # every program that compiled has its bound
  assert tpu_plan.uncosted_phases(result) == set()
  assert variant not in tpu_plan.planning_queue({variant: result})


def test_a_plan_made_at_other_rows_than_the_configs_is_queued_and_timed_as_planned():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  variant = tpu_plan.all_variants()[0]
  sft_rows, *others = tpu_plan.configured_rows(variant)
  stored = {"phase": "sft", "program": "SFT step", "seconds_per_call": 1.0, "calls": 7, "per_call": 0}
  stored |= {"hours_bound": 7 / 3600, "assumption": ""}
  results = {variant: {"devices": 4, "estimates": [stored], **_planned_at(tpu_plan, variant, (sft_rows // 2, *others))}}
  assert tpu_plan.sizes_changed(variant, results[variant])
  tpu_plan.recount(results)
  assert stored["calls"] == 7  # its bounds are of other programs: not counted again
  table = tpu_plan.time_table(results)
  (row,) = [line for line in table if line.startswith(f"| `{variant}` ¹ |")]
  assert row.split("|")[3].strip() == f"{7 / 3600 / 0.4:.3g}"  # the SFT hours at its planned rows
  assert any(line.startswith("¹ At the rows it was planned with") for line in table)
  # Planned again after every unplanned variant.
  queue = tpu_plan.planning_queue(results)
  assert queue[-1] == variant and queue[:-1] == [v for v in tpu_plan.all_variants() if v != variant]


@requires_libtpu
def test_whole_splits_count_at_their_published_sizes_and_rounds_as_they_run():
  import math

  from srit_jax import configs
  from srit_jax.planning import compiled_figures, program_plan, run_time, topology

  config = configs.load("paper", "llama2_7b,v5e-8")  # limit 0 everywhere; the hub's splits
  devices, _ = topology.tpu_devices("v5e-8")
  one = compiled_figures.Cost(1e12, 1e9)
  plans = [
    program_plan.ProgramPlan("refine", "sampler (64 rows)", "splash", cost=one, per_call=64),
    program_plan.ProgramPlan("refine", "DPO step", "splash", cost=one),
    program_plan.ProgramPlan("refine", "reference log-probs (16 pairs)", "splash", cost=one, per_call=16),
    program_plan.ProgramPlan("eval", "sampler (64 rows)", "splash", cost=one, per_call=64),
  ]

  def calls():
    return {(e.phase, e.program): e.calls for e in run_time.run_estimate(config, plans, devices)}

  assert config.refine.generate_batch_size == config.eval.batch_size == 64 and not config.eval.direct
  # Every one of GSM8K's 7,473 training questions: 4 CoT and 1 direct answer each, 64 rows a call.
  assert calls()[("refine", "sampler")] == math.ceil(7473 * 4 / 64) + math.ceil(7473 / 64)
  config.refine.strategy = "slip_corrected"  # and at most one continuation of each CoT answer
  assert calls()[("refine", "sampler")] == 2 * math.ceil(7473 * 4 / 64) + math.ceil(7473 / 64)
  config.refine.strategy = "cot_vs_direct"
  assert calls()[("refine", "DPO step")] == config.refine.num_steps
  config.refine.update(select_checkpoint="best_heldout", early_stopping_patience=3)  # every step at most
  (stopping,) = [e for e in run_time.run_estimate(config, plans, devices) if e.program == "DPO step"]
  assert stopping.calls == config.refine.num_steps and "at most: it stops early" in stopping.assumption
  config.refine.update(select_checkpoint="last", early_stopping_patience=0)
  sft_plan = program_plan.ProgramPlan("sft", "SFT step", "splash", cost=one)
  sft_estimate = lambda: next(e for e in run_time.run_estimate(config, [sft_plan], devices) if e.phase == "sft")
  assert sft_estimate().calls == config.sft.num_steps and "held-out" not in sft_estimate().assumption
  # SFT's held-out loss, a program of its own: 40 solutions at most, a row each, at steps 50, 100, ...
  config.demos.heldout_questions, config.sft.eval_every = 40, 50
  held_out_plan = program_plan.ProgramPlan(
    "sft", "SFT held-out loss", "splash", cost=one, per_call=config.sft.batch_size
  )
  (held_out,) = [e for e in run_time.run_estimate(config, [held_out_plan], devices)]
  evaluations = config.sft.num_steps // 50
  assert held_out.calls == evaluations * math.ceil(40 / config.sft.batch_size) and evaluations > 1
  assert f"40 held-out solutions at most, a row each, at {evaluations} evaluations" == held_out.assumption
  assert sft_estimate().calls == config.sft.num_steps and "held-out" not in sft_estimate().assumption
  config.demos.heldout_questions, config.sft.heldout_fraction = 0, 0.1  # a share of records read at run time
  (held_out,) = [e for e in run_time.run_estimate(config, [held_out_plan], devices)]
  assert held_out.calls is None and "not known here" in held_out.assumption
  config.sft.heldout_fraction, config.sft.eval_every = 0.0, 0
  # Up to 2 pairs a question, a tenth of the questions held out: 13,451 training pairs once, the
  # 1,495 held-out ones by the reference once and the policy at steps 0, 100, ..., 600.
  assert (config.refine.num_steps, config.refine.eval_every) == (600, 100)
  assert calls()[("refine", "reference log-probs")] == math.ceil(13451 / 16) + 8 * math.ceil(1495 / 16)
  # Three stages (untuned, SFT, SRIT) on every test question of the eight tasks, task by task.
  test_sets = {"gsm8k": 1319, "multiarith": 180, "svamp": 300, "csqa": 1221, "obqa": 500, "piqa": 1838}
  test_sets |= {"siqa": 1954, "mmlu": 14042}
  assert calls()[("eval", "sampler")] == 3 * sum(math.ceil(n / 64) for n in test_sets.values())

  # Two rounds with the control: the control samples in its second round only; both chains train.
  config.update(refine_iterations=2, control=True, eval_rounds=True)
  config.demos.limit = 1000
  assert calls()[("refine", "sampler")] == 3 * (math.ceil(4000 / 64) + math.ceil(1000 / 64))
  assert calls()[("refine", "DPO step")] == 4 * config.refine.num_steps
  # The reference scores the refined chain's 1,800 training pairs (1,000 questions, 2 pairs each,
  # a tenth held out) in each round; the 200 held-out ones 8 times a round in both chains.
  assert calls()[("refine", "reference log-probs")] == 2 * math.ceil(1800 / 16) + 4 * 8 * math.ceil(200 / 16)
  in_domain = math.ceil(1319 / 64) + math.ceil(180 / 64)  # round 1's student: in-domain tasks only
  assert calls()[("eval", "sampler")] == 4 * sum(math.ceil(n / 64) for n in test_sets.values()) + in_domain


def test_the_rows_the_95_percent_rule_allows_double_while_the_training_steps_fit():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  def result(sft_total, dpo_total, temporaries):
    steps = [("SFT step", sft_total), ("DPO step (8 pairs)", dpo_total), ("sampler (64 rows)", 16.0)]
    programs = [{"name": n, "total_gb": t, "temporaries_gb": temporaries} for n, t in steps]
    return {"hbm_gb": 16.0, "sft_rows": 16, "programs": programs}

  # 95% of 16 GB is 15.2; 6 GB fixed + 4 GB per 16 rows: 2.3x fits, so twice the rows (not 4x).
  assert tpu_plan.rows_the_rule_allows(result(10.0, 10.0, 4.0)) == 32
  assert tpu_plan.rows_the_rule_allows(result(10.0, 12.0, 4.0)) == 16  # the DPO step: 1.8x, no doubling
  assert tpu_plan.rows_the_rule_allows(result(6.0, 6.0, 1.0)) == 16 * 8  # 10.2x: three doublings
  assert tpu_plan.rows_the_rule_allows(result(15.5, 10.0, 4.0)) is None  # over the line already


def test_a_plan_sets_its_methods_rows_per_chip_in_the_paper_config(tmp_path):
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import importlib.util

  import tpu_plan

  # The config as it is, with the two entries this test plans set to known rows.
  text = tpu_plan.PAPER.read_text()
  text = re.sub(r'  \("qwen3_8b", "v4-16"\): .*\n', '  ("qwen3_8b", "v4-16"): ("full", 1, 4, 4),\n', text)
  text = re.sub(r'  \("qwen3_8b", "v5e-8"\): .*\n', '  ("qwen3_8b", "v5e-8"): ("lora", 1, 8, 8),  # planned\n', text)
  text = re.sub(r'  \("qwen3_8b", "v5e-16"\): .*\n', '  ("qwen3_8b", "v5e-16"): ("full", 1, 4, 4),\n', text)
  paper_file = tmp_path / "paper.py"
  paper_file.write_text(text)

  def sizes():
    spec = importlib.util.spec_from_file_location("paper_copy", paper_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SIZES

  def plan(method, sft_rows, devices, step_gb, temporaries_gb):
    programs = [{"name": name, "total_gb": step_gb, "temporaries_gb": temporaries_gb} for name in ("SFT", "DPO")]
    return {"method": method, "devices": devices, "sft_rows": sft_rows, "hbm_gb": 32.0, "programs": programs}

  before = sizes()
  assert before[("qwen3_8b", "v4-16")] == ("full", 1, 4, 4)
  # 8 rows over 8 chips, 10 GB fixed + 4 GB of temporaries: 95% of 32 GB allows 5.1x, so 4x the rows.
  change = tpu_plan.set_rows_the_rule_allows("qwen3_8b,v4-16", plan("full", 8, 8, 14.0, 4.0), paper_file)
  assert change == "qwen3_8b,v4-16: full rows per chip 1 -> 4"
  assert sizes()[("qwen3_8b", "v4-16")] == ("full", 4, 4, 4)
  assert _line(paper_file, '("qwen3_8b", "v4-16")').endswith("),  # planned\n")
  assert tpu_plan.set_rows_the_rule_allows("qwen3_8b,v4-16", plan("full", 32, 8, 28.0, 16.0), paper_file) is None

  # Another method's plan sets its own column only.
  # 64 rows over 8 chips, 20 GB fixed + 4 GB: 2.6x fits, so twice the rows: 16 a chip.
  change = tpu_plan.set_rows_the_rule_allows("qwen3_8b,v5e-8,qlora", plan("qlora", 64, 8, 24.0, 4.0), paper_file)
  assert change == "qwen3_8b,v5e-8,qlora: qlora rows per chip 8 -> 16"
  assert sizes()[("qwen3_8b", "v5e-8")] == ("lora", 1, 8, 16)

  # Over the line already: nothing changes.
  text = paper_file.read_text()
  assert tpu_plan.set_rows_the_rule_allows("qwen3_8b,v5e-16", plan("full", 16, 16, 31.0, 8.0), paper_file) is None
  assert paper_file.read_text() == text

  # Planned at the rows the rule allows (14 GB fixed + 10 GB: 1.3x fits, not 2x): no change, but marked planned.
  assert tpu_plan.set_rows_the_rule_allows("qwen3_8b,v5e-16", plan("full", 16, 16, 24.0, 10.0), paper_file) is None
  assert sizes()[("qwen3_8b", "v5e-16")] == ("full", 1, 4, 4)
  assert _line(paper_file, '("qwen3_8b", "v5e-16")').endswith("),  # planned\n")
  others = [key for key in before if key[0] != "qwen3_8b"]
  assert [sizes()[key] for key in others] == [before[key] for key in others]


def _line(path, key: str) -> str:
  return next(line for line in path.read_text().splitlines(keepends=True) if line.strip().startswith(key))


def test_every_stored_plan_sets_its_variants_rows_by_the_95_percent_rule():
  """configs/paper.py takes each planned variant's SFT rows from its stored plan: the most the
  rule allows (a plan over the line already keeps its rows); a plan made at other rows is queued."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  results = json.loads(tpu_plan.RESULTS.read_text())
  for variant, result in results.items():
    allowed = tpu_plan.rows_the_rule_allows(result) or result["sft_rows"]
    assert tpu_plan.configured_rows(variant)[0] == allowed, f"{variant}: SIZES gives other rows than its plan allows"


def test_stored_plans_are_counted_again_from_the_config_as_it_is():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import tpu_plan

  from srit_jax import configs

  variant = "llama2_7b,v5e-8"
  stored = {"phase": "refine", "program": "reference log-probs", "seconds_per_call": 0.5, "calls": None, "per_call": 16}
  stored |= {"hours_bound": None, "assumption": "limit 0: every training question"}  # as planned before counts
  tpu_plan.recount({variant: {"estimates": [stored], **_planned_at(tpu_plan, variant)}})
  config = configs.load("paper", variant)
  pairs = int(7473 * config.refine.max_pairs_per_question * 0.9)  # every GSM8K training question
  assert stored["per_call"] == 16  # the program's bound and rows per call stay
  assert stored["calls"] > pairs / 16 and stored["hours_bound"] == pytest.approx(0.5 * stored["calls"] / 3600)
  assert stored["assumption"].startswith(f"{pairs:,} training pairs")


def test_evaluation_plans_the_greedy_program_unless_it_samples_answers(monkeypatch):
  from srit_jax import configs
  from srit_jax.planning import programs

  planned = []
  monkeypatch.setattr(programs, "sampler_program", lambda phase, block, *a, **k: planned.append(block) or block)
  config = configs.load("eval")
  config.model = "smollm2-135m-instruct"
  programs._eval_program(config, config.model, [], 512, None)
  assert (planned[-1].temperature, planned[-1].top_p) == (0.0, 1.0)  # the eval block's 0.7 samples nothing
  config.update(sampled_answers=8, temperature=0.6, top_p=0.9)
  programs._eval_program(config, config.model, [], 512, None)
  assert (planned[-1].temperature, planned[-1].top_p) == (0.6, 0.9)
  assert config.temperature == 0.6  # the config itself as it was
  lengths = []
  monkeypatch.setattr(programs, "sampler_program", lambda *a, prompt_length, **k: lengths.append(prompt_length))
  config.update(num_shots=4, max_new_tokens=256)
  programs._eval_program(config, config.model, [], 512, None)
  assert lengths == [512 + 4 * (512 + 256)]  # four worked examples, each a prompt and an answer, first


def test_a_shallow_copy_keeps_the_first_layers_unrolled_or_under_the_scan():
  """Cost copies unroll their layers (XLA then counts each); a cut model keeps the scan as it was."""
  import dataclasses

  from srit_jax.model.presets import get_preset
  from srit_jax.planning import cost_model

  gemma = dataclasses.replace(get_preset("gemma-2-2b"), scan_unroll=1)  # sliding and global layers alternate
  unrolled, scanned = cost_model.shallow(gemma, 3), cost_model.shallow(gemma, 3, unrolled=False)
  assert unrolled.num_layers == scanned.num_layers == 3
  assert unrolled.layer_types == scanned.layer_types == gemma.layer_types[:3]
  assert (unrolled.scan_unroll, scanned.scan_unroll) == (3, 1)
