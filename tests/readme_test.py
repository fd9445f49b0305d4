"""The README's Python example runs as written (on the real SmolLM2, fetched once)."""

import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(smollm2_dir, tmp_path, capsys):
  (example,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    exec(compile(example, "README.md", "exec"), {})
  finally:
    os.chdir(cwd)
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 4 and all(line.endswith(("True", "False")) for line in printed)
  assert (tmp_path / "exported" / "config.json").is_file()
