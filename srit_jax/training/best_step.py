"""The step of the lowest held-out loss: kept while a run trains, exported in place of the last
step, and the rule that ends a run once the held-out loss has stopped falling (early stopping).

Written once for SFT and DPO:

    best = BestCheckpoint(workdir)
    def evaluate(state, step):
      values = ...held-out figures...
      best.offer(state, step, values["eval_loss"])
    run.fit(..., evaluate=evaluate, stop_early=patience_rule(best, patience, eval_every))
    if best.step != steps_run:
      state = state.replace(params=best.restore(state.params))
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

from srit_jax import io
from srit_jax.training import checkpointing

# The held-out figure a DPO run's step is chosen by where that is not its own loss ("eval/loss"):
# another loss type's (refine's selection_loss_type).
SELECTION_LOSS = "eval/selection_loss"


def other_selection_loss(config) -> str:
  """The loss type other than a run's own that chooses its step (refine's selection_loss_type),
  or "" where its own does (SFT's always)."""
  selection = config.get("selection_loss_type", "")
  return selection if selection != config.get("loss_type") else ""


class BestCheckpoint:
  """The trained tree at the step of the lowest held-out loss so far, in WORKDIR/best_checkpoint
  (one Orbax checkpoint, its step and loss beside it), kept across a resume."""

  def __init__(self, workdir: pathlib.Path):
    self.manager = checkpointing.CheckpointManager(workdir / "best_checkpoint", max_to_keep=1, async_save=False)
    self.info_path = workdir / "best_checkpoint.json"
    self.step, self.loss = None, float("inf")
    if self.info_path.exists():  # written once its checkpoint is complete
      info = json.loads(self.info_path.read_text(encoding="utf-8"))
      if info["step"] == self.manager.latest_step():
        self.step, self.loss = info["step"], info["loss"]

  def offer(self, state, step: int, loss: float) -> None:
    if loss < self.loss:
      self.manager.save(step, state.params, {"step": step, "loss": loss}, force=True)
      self.manager.wait()
      io.write_json(self.info_path, {"step": step, "loss": loss})
      self.step, self.loss = step, loss

  def restore(self, params):
    """The kept tree, in the shardings of `params`."""
    restored, _ = self.manager.restore(self.step, params)
    return restored


def patience_rule(best: BestCheckpoint, patience: int, eval_every: int) -> Callable[[int], str | None]:
  """`stop_early` for the training loop: why to stop at `step` once `patience` evaluations (every
  `eval_every` steps) have passed since the lowest held-out loss. Decided from the kept best
  step, so it holds across a resume and is the same on every process."""

  def stop_early(step: int) -> str | None:
    if best.step is not None and step - best.step >= patience * eval_every:
      return f"the held-out loss has not fallen below step {best.step}'s ({best.loss:.4f}) in {patience} evaluations"
    return None

  return stop_early


def logged_held_out(workdir: pathlib.Path) -> dict[int, dict]:
  """The held-out figures (metrics named eval...) in WORKDIR/metrics.jsonl, by step: a resumed
  run's earlier process logged those up to its checkpoint; the lines after it were dropped on resume."""
  return held_out_figures(io.complete_records(workdir / "metrics.jsonl"))


def held_out_figures(records: list[dict]) -> dict[int, dict]:
  """The held-out figures (metrics named eval...) among a run's metric records, by step."""
  logged = {}
  for record in records:
    values = {name: value for name, value in record.items() if name.startswith("eval")}
    if values:
      logged[record["step"]] = values
  return logged
