"""One training run, written once for SFT and DPO: mesh → model → state and its shardings →
the jitted step → the shared loop (resume, NaN guard, checkpoints, metrics) → export.

A phase adds only what is its own — its data and its step:

    run = TrainingRun.start(config, workdir, "sft")   # mesh, model, optimizer
    examples = ...tokenise with run.model.tokenizer...
    state = run.init_state()                          # sharded train state
    step = jit_sft_step(state, run.model.config, run.optimizer, run.mesh, ...)
    run.fit(step, batches, step_flops=...)            # the loop, until num_steps
    run.export()                                      # WORKDIR/export, an HF directory

The config block must hold: model, dtype, param_dtype, remat_policy, attention, mesh, batch_size,
num_microbatches, num_steps, optimizer, save_every, keep_checkpoints, async_checkpoints,
eval_every, export.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from srit_jax import host_memory, io, sharding
from srit_jax.conversion import hf_checkpoint, loading, peft
from srit_jax.data import fingerprint
from srit_jax.model import decoder, lora
from srit_jax.training import best_step, flops, loop, optimizer
from srit_jax.training.state import TrainState, create_train_state, state_shardings

# Settings that do not change what a run trains (how often it saves, where files lie: the model
# and the data are compared by content): a resumed run may change them.
RESUMABLE_CHANGES = frozenset(
  {
    "save_every", "keep_checkpoints", "async_checkpoints", "eval_every", "export", "mesh", "eval_file", "model",
    "reference_model", "train_file", "demos_file", "data_dir",
  }
)  # fmt: skip


class StaleCheckpointError(ValueError):
  """The workdir's checkpoints were made from other settings or data than this run's."""


class DeviceBatches:
  """Batches for the loop: a host iterator (with get_state/set_state for checkpoints) and the
  function that turns its host batch into global device arrays."""

  def __init__(self, host_iterator, to_device: Callable[[Any], Any]):
    self.host_iterator, self.to_device = host_iterator, to_device

  def __next__(self):
    return self.to_device(next(self.host_iterator))

  def get_state(self) -> dict:
    return self.host_iterator.get_state()

  def set_state(self, state: dict) -> None:
    self.host_iterator.set_state(state)


@dataclasses.dataclass
class TrainingRun:
  config: Any  # the phase's config block
  workdir: pathlib.Path
  mesh: Mesh
  model: loading.LoadedModel
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  block: str  # the config block the run reads ("sft", "refine"), for its neutral settings
  state: TrainState | None = None

  @classmethod
  def start(cls, config, workdir: str | pathlib.Path, block: str, *, batch_name: str = "batch_size") -> TrainingRun:
    """The mesh, the batch checked against it, the model loaded into its shardings, the optimizer."""
    workdir = io.as_path(workdir)
    if io.is_writer():
      workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.mesh_from_config(config.mesh)
    sharding.check_batch_divides(config.batch_size, mesh, batch_name, config.num_microbatches)
    model = loading.load_model(
      config.model,
      mesh=mesh,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      remat_policy=config.remat_policy,
      attention=config.attention,
      lora=config.get("lora"),
    )
    run = cls(
      config=config,
      workdir=workdir,
      mesh=mesh,
      model=model,
      optimizer=optimizer.make_optimizer(config.optimizer, config.num_steps),
      schedule=optimizer.learning_rate_schedule(config.optimizer, config.num_steps),
      block=block,
    )
    run._check_inputs(None)
    return run

  def reschedule(self, num_steps: int) -> None:
    """The run's length set from its data (before any training): the config's num_steps, the
    optimizer and its learning-rate schedule follow it."""
    self.config = self.config.copy_and_resolve_references()
    with self.config.unlocked():
      self.config.num_steps = num_steps
    self.optimizer = optimizer.make_optimizer(self.config.optimizer, num_steps)
    self.schedule = optimizer.learning_rate_schedule(self.config.optimizer, num_steps)

  @property
  def base(self):
    """The frozen base under LoRA (the steps' `base` argument), else None."""
    return self.model.params if self.model.adapters is not None else None

  @property
  def trainable(self):
    """What trains: the LoRA adapters, or every parameter."""
    return self.model.adapters if self.model.adapters is not None else self.model.params

  def init_state(self) -> TrainState:
    """The train state over what trains (adapters or parameters), laid out by logical axes;
    optimizer moments exist only for it."""
    state = create_train_state(self.trainable, self.optimizer)
    self.state = jax.device_put(state, state_shardings(state, self.model.config, self.mesh))
    return self.state

  def fit(
    self,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    batches: DeviceBatches,
    *,
    step_flops: float | Callable[[float], float],
    data_identity: str,
    evaluate: Callable[[TrainState, int], dict] | None = None,
    stop_early: Callable[[int], str | None] | None = None,
    rates: Callable[[dict, float], dict] | None = None,
    desc: str = "train",
    progress_keys: tuple[str, ...] = ("loss",),
  ) -> dict:
    """Trains from the latest checkpoint to `num_steps`; returns the last step's metrics.

    `step_flops` are the model FLOPs of one global step, or a function of its rows (the step's
    "rows" metric) where steps differ in rows; MFU divides them by the step time and the peak
    of all devices of the run. `rates(values, seconds)` adds per-second figures
    of the phase's own (pairs per second). `data_identity` (a digest of the training data)
    joins the settings in the fingerprint that checkpoints must share to be resumed.
    """
    config = self.config
    self._check_inputs(data_identity)
    peak = flops.peak_flops(config.dtype)
    io.write_json(
      self.workdir / "run.json",
      {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "mesh": dict(self.mesh.shape),
        "batch_size": config.batch_size,
        "num_microbatches": config.num_microbatches,
        # How long the run is, for `srit-jax status`: its steps, and where it may stop early.
        "num_steps": config.num_steps,
        "eval_every": config.get("eval_every", 0),
        "early_stopping_patience": config.get("early_stopping_patience", 0),
        "selection_loss": best_step.other_selection_loss(config),
        **({} if callable(step_flops) else {"model_flops_per_step": step_flops}),
        "peak_flops": peak,
      },
    )
    print(f"{jax.process_count()} process(es), {jax.device_count()} device(s), mesh {dict(self.mesh.shape)}")

    def derived_metrics(step, values, seconds):
      return {
        "learning_rate": float(self.schedule(step - 1)),
        "tokens_per_s": values["tokens"] / seconds,
        "mfu": (step_flops(values["rows"]) if callable(step_flops) else step_flops) / seconds / peak,
        **(rates(values, seconds) if rates else {}),
      }

    self.state, last = loop.run_steps(
      workdir=self.workdir,
      state=self.state,
      step_fn=step_fn,
      next_batch=lambda: next(batches),
      data_state=batches.get_state,
      restore_data_state=batches.set_state,
      num_steps=config.num_steps,
      save_every=config.save_every,
      keep_checkpoints=config.keep_checkpoints,
      async_checkpoints=config.async_checkpoints,
      derived_metrics=derived_metrics,
      evaluate=evaluate,
      eval_every=config.eval_every,
      stop_early=stop_early,
      desc=desc,
      progress_keys=progress_keys,
    )
    return last

  def _check_inputs(self, data_identity: str | None) -> None:
    """Checkpoints are resumed only by a run of the same settings, model and data; otherwise
    the run stops and names what differs. Checked once at the start (settings and model,
    before any other work) and again with the data before training, when the fingerprint is
    written."""
    derived = {"num_steps"} if self.config.get("num_epochs") else set()  # set from the epochs and the data
    settings = fingerprint.fingerprinted(self.config.to_dict(), self.block)
    settings = {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES | derived}
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    inputs = {"settings": settings, "model": self.model.identity, "data": data_identity}
    path = self.workdir / "train_inputs.json"
    checkpoints = self.workdir / "checkpoints"
    has_checkpoints = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if has_checkpoints and path.exists():
      saved = json.loads(path.read_text(encoding="utf-8"))
      changed = sorted(k for k in set(saved["settings"]) | set(settings) if saved["settings"].get(k) != settings.get(k))
      changed += [what for what in ("model", "data") if inputs[what] is not None and saved[what] != inputs[what]]
      if changed:
        raise StaleCheckpointError(
          f"{checkpoints}: checkpoints of a run with other {', '.join(changed)}; resume with the same settings, "
          "or use another --workdir (or remove its checkpoints to start over)"
        )
    if data_identity is not None:
      io.write_json(path, inputs)

  def export(self) -> pathlib.Path | None:
    """WORKDIR/export: the trained model as an HF directory (under LoRA the base with the
    adapters merged in), and under LoRA WORKDIR/export_adapter: the adapters for PEFT. The
    optimizer's moments, saved with the last checkpoint, are let go first."""
    if not self.config.export:
      return None
    if self.state is not None:
      self.state = self.state.replace(opt_state=None)
      host_memory.release()
    export_dir = self.workdir / "export"
    config = self.model.config
    if self.model.adapters is None:
      hf_checkpoint.save_hf_checkpoint(self.state.params, config, export_dir, tokenizer=self.model.tokenizer)
    else:
      plain = config.without_adapters()
      shardings = sharding.tree_shardings(decoder.boxed_param_shapes(plain), self.mesh)
      merged = jax.jit(lambda base, adapters: lora.merge_adapters(base, adapters, config), out_shardings=shardings)(
        self.base, self.state.params
      )
      hf_checkpoint.save_hf_checkpoint(merged, plain, export_dir, tokenizer=self.model.tokenizer)
      if config.fused_projections:
        print(f"no PEFT adapter: {config.model_type} fuses q/k/v and gate/up, which separate adapters do not fit")
      else:
        peft.save_peft_adapter(
          self.state.params, config, self.workdir / "export_adapter", base_model=str(self.config.model)
        )
    print(f"exported to {export_dir}")
    return export_dir
