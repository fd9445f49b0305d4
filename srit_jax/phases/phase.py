"""A pipeline phase: its folder, and the marker that says it is done.

A phase runs in WORKDIR/<name> and, when it completes, writes DONE.json with a fingerprint of
its inputs (its settings and the phases it reads from, paths inside the workdir made portable).
A rerun skips a phase whose fingerprint matches, runs again (and says why) one whose inputs
changed, and resumes one that was interrupted. A phase not done here that another run
(`other_runs`) finished with the same fingerprint is taken over from it.
"""

from __future__ import annotations

import json
import pathlib

from srit_jax import host_memory, io
from srit_jax.data import fingerprint
from srit_jax.phases import phase_time

RUN_CONFIG = "run_config.json"  # the config of the run started last in a pipeline's workdir

# A training phase's folders of checkpoints: what resumes it, not what later phases read.
TRAINING_STATE = ("checkpoints", "best_checkpoint")


class Phase:
  """A phase directory with a completion marker keyed by a fingerprint of its inputs.

  When the inputs change, the directory is emptied but for `keep`: files that carry their own
  fingerprint and are remade when theirs no longer matches (the student's samples, which a
  change of DPO settings leaves valid). A phase about to run starts from what the phases before
  it gave back (their models, optimizer states and compiled programs, these kept from one
  evaluation stage to the next); its marker records its own peak resident memory and the wall
  time it took over its attempts (`phase_time`). Settings blocks (dicts) are read without their
  neutral settings (fingerprint.NEUTRAL_SETTINGS), so a phase made before a setting existed is
  still found done. A phase not done here that another run (`reuse_from`) finished with the same
  fingerprint is taken over from it, its files hard links to that run's."""

  def __init__(self, workdir: pathlib.Path, name: str, *inputs, keep: tuple[str, ...] = (), reuse_from: tuple = ()):
    self.name, self.dir = name, workdir / name
    inputs = [fingerprint.fingerprinted(i) if isinstance(i, dict) else i for i in inputs]
    self.fingerprint = fingerprint.digest(fingerprint.portable(inputs, workdir))
    self.marker = self.dir / "DONE.json"
    self.keep = keep
    self.reuse_from = reuse_from  # other runs' workdirs (other_runs): where this phase may be done already

  def done(self, same_programs_as_last: bool = False) -> bool:
    """Whether the phase is done. If not, it starts from what the phases before it gave back,
    their compiled programs kept if it runs the same ones as the last phase that ran."""
    if self._done():
      return True
    host_memory.release(programs=not same_programs_as_last)
    host_memory.reset_peak()
    phase_time.start_attempt(self.dir)
    return False

  def _done(self) -> bool:
    if _fingerprint_of(self.dir) == self.fingerprint:
      print(f"[{self.name}] done already, skipped")
      return True
    done_elsewhere = next((d for w in self.reuse_from if _fingerprint_of(d := w / self.name) == self.fingerprint), None)
    if done_elsewhere is not None:
      # Its files become hard links to that run's (never written through), in place of any here;
      # not its training state, which only resumes the phase (later phases read its export), and
      # on object storage, where a link is a copy, would copy the weights and optimizer again.
      print(f"[{self.name}] done with the same inputs in {done_elsewhere}: linked from there, not run")
      io.reset_directory(self.dir)
      io.link_tree(done_elsewhere, self.dir, leave_out=(*TRAINING_STATE, self.marker.name))
      # The marker last (a takeover killed midway is not found done), its own file saying where the
      # phase was made: the time and memory it records are that run's, not this one's.
      marker = json.loads((done_elsewhere / self.marker.name).read_text(encoding="utf-8"))
      io.write_json(self.marker, {**marker, "taken_over_from": marker.get("taken_over_from", str(done_elsewhere))})
      io.barrier(f"took over {self.marker}")
      return True
    if not self.marker.exists():
      if self.dir.exists():
        print(f"[{self.name}] resuming an interrupted run in {self.dir}")
      return False
    kept = sorted(name for name in self.keep if (self.dir / name).exists())
    print(
      f"[{self.name}] its config or an earlier phase changed since it ran: running it again"
      + (f" (keeping {', '.join(kept)}, remade if stale)" if kept else "")
    )
    io.reset_directory(self.dir, keep=self.keep)
    return False

  def finish(self, details: dict | None = None) -> None:
    details = {**(details or {}), "peak_rss_bytes": host_memory.peak_bytes(), **phase_time.finish_attempt(self.dir)}
    io.write_json(self.marker, {"fingerprint": self.fingerprint, **details})
    io.barrier(f"finished {self.marker}")

  def recorded(self) -> dict:
    """What the finished phase's marker holds: its peak resident memory ("peak_rss_bytes") and its
    wall time over its attempts ("seconds", "attempts"; absent where it finished before they were
    kept); for a phase taken over from another run, that run's, and its folder ("taken_over_from")."""
    return json.loads(self.marker.read_text(encoding="utf-8"))


def _fingerprint_of(phase_dir) -> str | None:
  """The fingerprint a finished phase's marker records; None where the phase has not finished."""
  marker = phase_dir / "DONE.json"
  return json.loads(marker.read_text(encoding="utf-8"))["fingerprint"] if marker.exists() else None


def other_runs(folders: str, workdir) -> tuple:
  """The pipeline workdirs (those holding a RUN_CONFIG) named in `folders`, comma-separated:
  workdirs, or folders of them (a study's root); this run's own left out."""
  found = []
  for folder in (io.as_path(f.strip()) for f in folders.split(",") if f.strip()):
    candidates = [folder] if (folder / RUN_CONFIG).exists() else sorted(folder.iterdir(), key=str)
    # A path inside this workdir reads "$WORKDIR..." made portable.
    found += [
      c for c in candidates if (c / RUN_CONFIG).exists() and fingerprint.portable(str(c), workdir) != "$WORKDIR"
    ]
  return tuple(found)
