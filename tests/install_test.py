"""The installed set is the pinned one: CI installs with constraints.txt (the exact versions the
last passing run used), and a drifted install fails here by name rather than somewhere deep."""

import importlib.metadata
import os
import pathlib
import re

import pytest

CONSTRAINTS = pathlib.Path(__file__).parents[1] / "constraints.txt"


def _pins() -> dict[str, str]:
  pins = {}
  for line in CONSTRAINTS.read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, version = line.split("==")
      pins[re.sub(r"[-_.]+", "-", name).lower()] = version
  return pins


def test_constraints_pin_every_dependency_of_the_package_exactly():
  pins = _pins()
  requirements = importlib.metadata.requires("srit_jax") or []
  # The package's own and those of the extras CI installs (test, tpu); not tfds, which CI leaves out.
  kept = [r for r in requirements if "extra ==" not in r or re.search(r'extra == "(test|tpu)"', r)]
  names = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in kept}
  missing = sorted(n for n in names if re.sub(r"[-_.]+", "-", n).lower() not in pins)
  assert not missing, f"constraints.txt pins none of {missing}"
  assert "torch" not in pins  # installed on its own: a CPU build for the tests, any build for users


@pytest.mark.skipif(not os.environ.get("SRIT_JAX_PINNED"), reason="installed without constraints.txt (.ci/run pins)")
def test_the_installed_versions_are_the_pinned_ones():
  drifted = []
  for name, version in _pins().items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue  # an optional extra's package not asked for
    if installed != version:
      drifted.append(f"{name} {installed} (pinned {version})")
  assert not drifted, "installed versions differ from constraints.txt: " + ", ".join(drifted)
