"""`srit-jax demos` with the real SmolLM2 as a local teacher and `srit-jax eval` on a few tasks,
end to end, and the pieces they are made of."""

import json
import os
import subprocess
import sys

import pytest
from conftest import SHARED_DATA, load_config

from srit_jax.phases import demos
from srit_jax.tasks import answers, arithmetic
from srit_jax.tasks.example import NUMBER, Example
from srit_jax.teachers.reference import ReferenceSolutionTeacher


def test_filters_keep_what_they_say():
  examples = [Example("t", str(i), f"q{i}", "7", NUMBER) for i in range(3)]
  texts = [["The answer is 7.", "The answer is 7."], ["The answer is 8.", "The answer is 7."], ["The answer is 1."]]
  records = demos.demonstration_records(examples, texts, ReferenceSolutionTeacher())
  assert [r["correct"] for r in records] == [True, True, False, True, False]
  assert len(demos.filter_records(records, "all")) == 5
  assert [(r["id"], r["sample"]) for r in demos.filter_records(records, "correct")] == [("0", 0), ("0", 1), ("1", 1)]
  assert [(r["id"], r["sample"]) for r in demos.filter_records(records, "first_correct")] == [("0", 0), ("1", 1)]
  summary = demos.summarize(records, demos.filter_records(records, "correct"), ReferenceSolutionTeacher())
  assert summary["tasks"]["t"] == {
    "questions": 3,
    "samples": 5,
    "correct_samples": 3,
    "accuracy": 0.6,
    "questions_solved": 2,
    "kept": 3,
  }


def test_demos_from_a_precomputed_teacher_train_the_sft_reader(tmp_path):
  from srit_jax.data import records

  config = load_config("demos", "palm_csqa")
  config.teacher.path = str(SHARED_DATA / "teachers" / "palm540b_cqa")
  config.limit = 100
  summary = demos.run(config, tmp_path)
  kept = [json.loads(line) for line in (tmp_path / "demos.jsonl").read_text().splitlines()]
  assert summary["tasks"]["csqa"]["questions"] == 100 and len(kept) == summary["tasks"]["csqa"]["kept"]
  assert all(r["correct"] and r["family"] == "palm" and r["teacher"] == "palm-540b" for r in kept)
  assert 60 <= len(kept) <= 90  # about three in four
  assert len(records.read_instruction_records(tmp_path / "demos.jsonl")) == len(kept)


@pytest.mark.parametrize("reader", ["", "palm_csqa"])  # a task's own solutions; a precomputed teacher
def test_held_out_questions_are_the_next_ones_and_leave_the_demonstrations_as_they_were(tmp_path, reader):
  config = load_config("demos", reader)
  if reader:
    config.teacher.path = str(SHARED_DATA / "teachers" / "palm540b_cqa")
  config.limit = 30
  demos.run(config, tmp_path / "plain")
  config.heldout_questions = 10
  summary = demos.run(config, tmp_path / "held")
  for name in ("demos.jsonl", "all_answers.jsonl"):  # training demonstrations: byte for byte the same
    assert (tmp_path / "held" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
  training = {json.loads(line)["id"] for line in (tmp_path / "held" / "all_answers.jsonl").read_text().splitlines()}
  held_out = [json.loads(line) for line in (tmp_path / "held" / demos.HELD_OUT_FILE).read_text().splitlines()]
  assert len(training) == 30 and held_out and all(r["correct"] for r in held_out)
  assert not training & {r["id"] for r in held_out}
  assert summary["heldout"] == {"questions": 10, "kept": len(held_out)}
  assert not (tmp_path / "plain" / demos.HELD_OUT_FILE).exists()


def test_held_out_questions_need_a_limit_and_the_pipeline_holds_sft_out_on_them():
  from srit_jax import configs
  from srit_jax.configs import checks

  config = load_config("demos")
  config.heldout_questions = 10
  with pytest.raises(checks.ConfigError, match="heldout_questions = 10: the held-out questions are those after"):
    checks.check(config, "demos")
  pipeline = configs.load("wordmath")
  pipeline.sft.update(eval_every=10, select_checkpoint="best_heldout")
  with pytest.raises(checks.ConfigError, match=r"sft\.select_checkpoint = 'best_heldout': needs held-out data"):
    checks.check(pipeline, "pipeline")
  pipeline.demos.heldout_questions = 40  # SFT's held-out loss on their demonstrations
  checks.check(pipeline, "pipeline")
  pipeline.sft.heldout_fraction = 0.1
  with pytest.raises(checks.ConfigError, match=r"heldout_fraction = 0\.1 with demos\.heldout_questions: one held-out"):
    checks.check(pipeline, "pipeline")


@pytest.mark.slow
def test_demos_with_smollm2_as_a_local_teacher(smollm2_dir, tmp_path):
  config = load_config("demos", "local")
  config.teacher.model = str(smollm2_dir)
  config.teacher.max_new_tokens = 40
  config.teacher.batch_size = 8
  config.task, config.limit, config.num_samples, config.keep = "arith", 4, 2, "all"
  summary = demos.run(config, tmp_path, progress=False)
  lines = (tmp_path / "demos.jsonl").read_text().splitlines()
  kept = [json.loads(line) for line in lines]
  assert summary["family"] == "smollm" and summary["tasks"]["arith"]["samples"] == 8
  assert [(r["id"], r["sample"]) for r in kept] == [(f"train-{i}", s) for i in range(4) for s in range(2)]
  for r in kept:
    example = Example(r["task"], r["id"], r["question"], r["gold"], r["answer_type"])
    assert r["extracted"] == answers.extract_answer(example, r["output"])
    assert r["correct"] == answers.is_correct(example, r["extracted"])
    assert r["instruction"].endswith("Let's think step by step.") and r["teacher"] == str(smollm2_dir)
  assert kept[0]["output"] != kept[1]["output"]  # two samples, two seeds
  generations = (tmp_path / "teacher_generations.jsonl").read_bytes()
  demos.run(config, tmp_path, progress=False)  # a rerun generates nothing new and writes the same file
  assert (tmp_path / "teacher_generations.jsonl").read_bytes() == generations
  assert (tmp_path / "demos.jsonl").read_text().splitlines() == lines


@pytest.mark.long  # 2.5 minutes; the pipeline tests run the eval command on the tiny student
def test_eval_command_end_to_end(smollm2_dir, tmp_path):
  workdir = tmp_path / "eval"
  command = [
    sys.executable,
    "-m",
    "srit_jax.cli",
    "eval",
    "--config=configs/eval.py",
    f"--config.model={smollm2_dir}",
    "--config.tasks=arith,csqa",
    f"--config.data_dir={SHARED_DATA / 'benchmarks'}",
    "--config.limit=3",
    "--config.batch_size=4",  # the 3 questions of a task decode in 4 rows, not 16
    "--config.direct=True",
    "--config.max_new_tokens=48",
    "--config.mesh.fsdp=1",
    f"--workdir={workdir}",
  ]
  root = os.path.dirname(os.path.dirname(__file__))
  result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary) == {"arith", "csqa"} and all(set(v) == {"cot", "direct"} for v in summary.values())
  for task in ("arith", "csqa"):
    for style in ("cot", "direct"):
      rows = [json.loads(line) for line in (workdir / f"{task}.{style}.jsonl").read_text().splitlines()]
      assert len(rows) == 3 and all(set(r) >= {"prompt", "generation", "extracted", "gold", "correct"} for r in rows)
      entry = summary[task][style]
      assert entry["n"] == 3 and entry["correct"] == sum(r["correct"] for r in rows)
      assert entry["ci95"][0] <= entry["accuracy"] <= entry["ci95"][1]
  assert rows[0]["gold"] == "A"  # csqa validation's first question
  # Numeric tasks' CoT answers get their arithmetic checked; multiple choice and direct do not.
  arith = [json.loads(line) for line in (workdir / "arith.cot.jsonl").read_text().splitlines()]
  expected = arithmetic.profile((r["generation"], r["correct"]) for r in arith)
  assert summary["arith"]["cot"]["arithmetic"] == expected and expected["answers"] == 3
  assert "arithmetic" not in summary["csqa"]["cot"] and "arithmetic" not in summary["arith"]["direct"]
  table = (workdir / "results.md").read_text()
  assert "| csqa | 3 |" in table and "cot accuracy (95% CI)" in table and "| csqa |" in result.stdout
