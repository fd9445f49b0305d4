"""Evaluation's sampled answers: pass@k and the majority vote, scored from known answers and
run end to end on a tiny model beside the greedy answers, which they leave as they were."""

import json

import pytest
from conftest import SHARED_DATA, TINY_TOKENIZER, load_tiny_pipeline_config

from srit_jax import io
from srit_jax.configs import checks
from srit_jax.configs.eval import get_config
from srit_jax.conversion import loading
from srit_jax.generation.jsonl import Completion
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.phases import evaluate
from srit_jax.statistics import pass_at_k
from srit_jax.tasks import load_examples
from srit_jax.tasks.example import NUMBER, Example


def _answers(*texts):
  return [Completion(f"... so the answer is {t}." if t else "I do not know.", "eos") for t in texts]


def test_sampled_answers_score_pass_at_k_and_the_majority_vote():
  examples = [Example("t", str(i), "q", gold, NUMBER) for i, gold in enumerate(["4", "10", "7", "1"])]
  completions = [
    _answers("4", "5", "4.0", ""),  # 2 of 4 right; the vote right
    _answers("11", "10", "11", "12"),  # 1 of 4; the vote wrong
    _answers("", "", "", ""),  # no answer: no vote
    _answers("1", "1", "1", "1"),
  ]
  rows = evaluate.score_samples(examples, completions)
  assert [r["correct"] for r in rows][:2] == [[True, False, True, False], [False, True, False, False]]
  assert [r["majority"] for r in rows] == ["4", "11", None, "1"]
  assert [r["majority_correct"] for r in rows] == [True, False, False, True]
  sampled = evaluate.SampledAnswers(4, SamplingSettings(temperature=0.7))
  entry = evaluate.sampled_entry(rows, sampled)
  assert sampled.ks() == [1, 2, 4] and set(entry["pass_at"]) == {"1", "2", "4"}
  assert entry["pass_at"]["1"]["value"] == pytest.approx((2 / 4 + 1 / 4 + 0 + 1) / 4)
  assert entry["pass_at"]["2"]["value"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2) + 0 + 1) / 4)
  assert entry["pass_at"]["4"]["value"] == pytest.approx(3 / 4)  # questions with any right answer
  low, high = entry["pass_at"]["1"]["ci95"]
  assert low <= entry["pass_at"]["1"]["value"] <= high
  assert entry["majority"]["correct"] == 2 and entry["majority"]["n"] == 4
  assert entry["samples"] == 4 and entry["temperature"] == 0.7 and entry["seed"] == 0
  table = evaluate.sampled_table({"t": entry})
  assert "| pass@1 | pass@2 | pass@4 | majority vote |" in table and "| t | 4 | 4 (0.7) | 43.8% (" in table
  assert evaluate.SampledAnswers(6, SamplingSettings(temperature=1.0)).ks() == [1, 2, 4, 6]


def test_sampled_answers_pair_pass_at_1_and_pass_at_k_by_question(tmp_path):
  examples = [Example("t", str(i), "q", gold, NUMBER) for i, gold in enumerate(["4", "10", "7", "1"])]
  before = [_answers("4", "5"), _answers("9", "9"), _answers("", ""), _answers("1", "1")]
  after = [_answers("4", "4"), _answers("9", "10"), _answers("", ""), _answers("2", "2")]
  before, after = evaluate.score_samples(examples, before), evaluate.score_samples(examples, after)
  files = []
  for name, rows in (("before", before), ("after", reversed(after))):  # another order: paired by id
    files.append(tmp_path / f"{name}.cot.sampled.jsonl")
    io.write_jsonl(files[-1], list(rows))
  first, second = (evaluate.per_question_samples(f) for f in files)
  assert first == {"0": [True, False], "1": [False, False], "2": [False, False], "3": [True, True]}
  paired = evaluate.paired_samples(first, second)
  # pass@1 per question: 1/2, 0, 0, 1 before; 1, 1/2, 0, 0 after.
  one = paired["pass@1"]
  assert one["first_mean"] == pytest.approx(0.375) and one["second_mean"] == pytest.approx(0.375)
  assert one["difference"] == pytest.approx(0.0) and one["ci95"][0] < 0 < one["ci95"][1]
  # pass@2: questions 0 and 3 reached before, 0 and 1 after; 3 only before, 1 only after.
  reached = paired["pass@k"]
  assert reached["k"] == 2 and (reached["first_correct"], reached["second_correct"]) == (2, 2)
  assert (reached["only_first_correct"], reached["only_second_correct"]) == (1, 1) and reached["mcnemar_p"] == 1.0
  files[0].write_text(files[0].read_text() + '{"id": "9", "correct": [true, "false"]}\n')
  with pytest.raises(io.DataError, match=r"before.cot.sampled.jsonl:5: field 'correct' must be a non-empty list"):
    evaluate.per_question_samples(files[0])
  # Different answer counts: pass@1 still pairs; pass@k, whose k would differ, is left out.
  fewer = {i: c[:1] for i, c in second.items()}
  assert set(evaluate.paired_samples(first, fewer)) == {"pass@1"}


def test_sampled_answers_need_a_temperature():
  with pytest.raises(ValueError, match="temperature > 0"):
    evaluate.SampledAnswers(4, SamplingSettings(temperature=0.0))
  config = get_config()
  config.update(sampled_answers=4, temperature=0.0)
  assert any(p.startswith("temperature = 0: the 4 sampled answers") for p in checks.problems(config, "eval"))
  config.temperature = 0.7
  assert not any("sampled" in p for p in checks.problems(config, "eval"))


def test_an_evaluation_with_sampled_answers_keeps_its_greedy_answers(tiny_student, tmp_path):
  model = loading.load_model(tiny_student)
  examples = {"arith": load_examples("arith", "test", limit=5)}
  options = dict(max_new_tokens={"cot": 12}, batch_size=8, progress=False)
  greedy = evaluate.evaluate(model, examples, tmp_path / "greedy", **options)
  sampled = evaluate.SampledAnswers(3, SamplingSettings(temperature=1.0), seed=1)
  summary = evaluate.evaluate(model, examples, tmp_path / "sampled", sampled=sampled, **options)
  assert (tmp_path / "sampled" / "arith.cot.jsonl").read_bytes() == (
    tmp_path / "greedy" / "arith.cot.jsonl"
  ).read_bytes()
  entry = summary["arith"]["cot"]
  assert {k: v for k, v in entry.items() if k != "sampled"} == greedy["arith"]["cot"]
  generations = (tmp_path / "sampled" / "arith.cot.sampled.generations.jsonl").read_text().splitlines()
  assert len(generations) == 5 * 3
  texts = {json.loads(line)["completion"] for line in generations}
  assert len(texts) > 5  # sampled: not one answer a question
  rows = [json.loads(line) for line in (tmp_path / "sampled" / "arith.cot.sampled.jsonl").read_text().splitlines()]
  assert [r["id"] for r in rows] == [e.id for e in examples["arith"]] and all(len(r["correct"]) == 3 for r in rows)
  assert entry["sampled"] == evaluate.sampled_entry(rows, sampled)
  assert evaluate.per_question_outcomes(tmp_path / "sampled" / "arith.cot.sampled.jsonl") == {
    r["id"]: r["majority_correct"] for r in rows
  }
  assert "pass@3" in (tmp_path / "sampled" / "results.md").read_text()
  # Another sampling seed is another draw; the same one resumes from the file as it is.
  before = (tmp_path / "sampled" / "arith.cot.sampled.generations.jsonl").read_bytes()
  evaluate.evaluate(model, examples, tmp_path / "sampled", sampled=sampled, **options)
  assert (tmp_path / "sampled" / "arith.cot.sampled.generations.jsonl").read_bytes() == before
  other = evaluate.SampledAnswers(3, SamplingSettings(temperature=1.0), seed=2)
  evaluate.evaluate(model, examples, tmp_path / "other", sampled=other, **options)
  assert (tmp_path / "other" / "arith.cot.sampled.generations.jsonl").read_bytes() != before


def _write_answers(path, correct: dict[str, bool], key: str = "correct"):
  path.parent.mkdir(parents=True, exist_ok=True)
  if key == "majority_correct":  # a sampled answers file: two answers a question, right as the vote
    rows = ({"id": i, key: c, "correct": [c, False]} for i, c in correct.items())
  else:
    rows = ({"id": i, key: c} for i, c in correct.items())
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_answers_pair_with_another_evaluation_on_the_questions_both_answered(tmp_path):
  this, other = tmp_path / "this", tmp_path / "other"
  _write_answers(this / "arith.cot.jsonl", {"1": True, "2": True, "3": False, "4": True})
  _write_answers(other / "arith.cot.jsonl", {"1": False, "2": True, "3": False, "5": True})  # 4 and 5: unpaired
  _write_answers(this / "arith.cot.sampled.jsonl", {"1": True, "2": False, "3": True}, key="majority_correct")
  _write_answers(other / "arith.cot.sampled.jsonl", {"1": True, "2": True, "3": True}, key="majority_correct")
  paired = evaluate.paired_with({"arith": {}, "gsm8k": {}}, this, other)  # gsm8k: answered by neither
  greedy, majority = paired["arith"]["greedy"], paired["arith"]["majority vote"]
  assert set(paired) == {"arith"} and greedy["n"] == 3 and greedy["difference"] == pytest.approx(1 / 3)
  assert (greedy["only_first_correct"], greedy["only_second_correct"]) == (0, 1)  # first: the other one
  assert majority["difference"] == pytest.approx(-1 / 3)
  # Each question's answers: [vote, wrong]; pass@1 half the votes' difference, pass@2 the votes'.
  assert paired["arith"]["pass@1"]["difference"] == pytest.approx(-1 / 6)
  assert paired["arith"]["pass@2"]["difference"] == pytest.approx(-1 / 3) and paired["arith"]["pass@2"]["k"] == 2
  table = evaluate.paired_table(paired, other)
  assert "| arith | greedy | 3 | +33.3 (" in table and "| arith | majority vote | 3 | -33.3 (" in table
  assert "| arith | pass@1 | 3 | -16.7 (" in table and "| — | — | — |" in table
  assert "| arith | pass@2 | 3 | -33.3 (" in table
  with pytest.raises(ValueError, match=r"paired_with = '.*empty': holds no answers to the questions of arith"):
    evaluate.paired_with({"arith": {}}, this, tmp_path / "empty")


def test_an_evaluation_paired_with_an_earlier_one_of_the_same_model_differs_by_nothing(tiny_student, tmp_path):
  config = get_config()
  config.update(model=str(tiny_student), tasks="arith", limit=4, max_new_tokens=8, batch_size=4)
  config.mesh.fsdp = 1
  evaluate.run(config, tmp_path / "first", progress=False)
  config.paired_with = str(tmp_path / "first")
  evaluate.run(config, tmp_path / "second", progress=False)
  paired = json.loads((tmp_path / "second" / "paired.json").read_text())
  assert paired["arith"]["greedy"]["n"] == 4 and paired["arith"]["greedy"]["difference"] == 0.0
  assert paired["arith"]["greedy"]["mcnemar_p"] == 1.0
  assert f"the model evaluated in {tmp_path / 'first'}" in (tmp_path / "second" / "results.md").read_text()
  config.paired_with = str(tmp_path / "missing")
  assert any(p.startswith("paired_with = ") and "no such directory" in p for p in checks.problems(config, "eval"))
  pipeline_config = load_tiny_pipeline_config()
  pipeline_config.eval.paired_with = str(tmp_path / "first")
  assert any("the pipeline pairs its own stages" in p for p in checks.problems(pipeline_config, "pipeline"))


def test_answers_without_their_fields_are_named_by_file_line_and_field(tmp_path):
  from srit_jax.tasks import DataError

  _write_answers(tmp_path / "arith.cot.jsonl", {"1": True})
  with open(tmp_path / "arith.cot.jsonl", "a") as f:
    f.write(json.dumps({"id": "2", "correct": "yes"}) + "\n")
  with pytest.raises(DataError, match=r"arith\.cot\.jsonl:2: field 'correct' must be bool, got str"):
    evaluate.per_question_outcomes(tmp_path / "arith.cot.jsonl")
  _write_answers(tmp_path / "arith.cot.sampled.jsonl", {"1": True})  # a sampled file without its votes
  with pytest.raises(DataError, match=r"arith\.cot\.sampled\.jsonl:1: field 'majority_correct' is missing"):
    evaluate.per_question_outcomes(tmp_path / "arith.cot.sampled.jsonl")


def test_worked_examples_show_their_solution_closed_by_the_answer_sentence():
  from srit_jax.tasks import prompts
  from srit_jax.tasks.example import CHOICE

  gsm8k_like = Example("gsm8k", "7", "How many?", "5", NUMBER, solution="2 + 3 = 5\nThe answer is 5.")
  assert prompts.shot(gsm8k_like) == {"prompt": prompts.prompt(gsm8k_like), "answer": "2 + 3 = 5\nThe answer is 5."}
  aqua_like = Example("aqua", "3", "Which?", "B", CHOICE, ("x", "y"), solution="Twice 4 is 8, which is y.")
  assert prompts.shot(aqua_like)["answer"] == "Twice 4 is 8, which is y. The answer is (B)."
  assert prompts.shot(aqua_like, prompts.DIRECT) == {
    "prompt": prompts.prompt(aqua_like, prompts.DIRECT),
    "answer": "The answer is (B).",
  }
  with pytest.raises(ValueError, match=r"csqa/9: has no worked solution to show as a chain-of-thought example"):
    prompts.shot(Example("csqa", "9", "Where?", "A", CHOICE, ("x", "y")))


def test_worked_examples_come_first_as_earlier_chat_turns_or_plain_text():
  from transformers import AutoTokenizer

  from srit_jax.generation.jsonl import encode_prompt

  tokenizer = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
  shots = [{"prompt": "1 + 1?", "answer": "2"}, {"prompt": "2 + 2?", "answer": "4"}]
  record = {"prompt": "3 + 3?", "shots": shots}
  turns = [
    {"role": "user", "content": "1 + 1?"},
    {"role": "assistant", "content": "2"},
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "3 + 3?"},
  ]
  expected = tokenizer.apply_chat_template(turns, add_generation_prompt=True)
  expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
  assert encode_prompt(tokenizer, record, True, "r") == expected
  assert encode_prompt(tokenizer, record, False, "r") == tokenizer("1 + 1?\n2\n\n2 + 2?\n4\n\n3 + 3?")["input_ids"]
  assert encode_prompt(tokenizer, {"prompt": "3 + 3?"}, True, "r") != expected  # zero-shot: the question alone
  with pytest.raises(ValueError, match=r"record 4: shots\[1\] needs a non-empty string 'answer'"):
    encode_prompt(tokenizer, {"prompt": "3 + 3?", "shots": [shots[0], {"prompt": "x"}]}, True, "record 4")


def test_a_few_shot_evaluation_is_its_own_generation_and_says_how_many_shots(tiny_student, tmp_path):
  config = get_config()
  config.update(model=str(tiny_student), tasks="arith", limit=3, max_new_tokens=8, batch_size=4, num_shots=2)
  config.mesh.fsdp = 1
  summary = evaluate.run(config, tmp_path / "two_shots", progress=False)
  assert summary["arith"]["cot"]["shots"] == 2
  config.num_shots = 0
  summary = evaluate.run(config, tmp_path / "zero_shot", progress=False)
  assert "shots" not in summary["arith"]["cot"]
  meta = [
    json.loads((tmp_path / d / "arith.cot.generations.jsonl.meta.json").read_text()) for d in ("two_shots", "zero_shot")
  ]
  assert meta[0]["inputs"] != meta[1]["inputs"]  # the worked examples are part of what was generated from
  config.tasks, config.num_shots = "csqa", 2  # no worked solutions in CSQA's training split
  config.data_dir = str(SHARED_DATA / "benchmarks")
  with pytest.raises(ValueError, match="has no worked solution"):
    evaluate.run(config, tmp_path / "csqa", progress=False)
  pipeline_config = load_tiny_pipeline_config()
  pipeline_config.eval.num_shots = 4
  assert any("evaluates its students zero-shot" in p for p in checks.problems(pipeline_config, "pipeline"))
