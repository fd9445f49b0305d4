"""Pair building: strategies, teacher fallback, caps, statistics, held-out split, and the pair
batches the DPO step reads."""

import json

import pytest

from srit_jax.data import preference_pairs
from srit_jax.data.preference_pairs import ScoredAnswer
from srit_jax.tasks.example import NUMBER, Example

EXAMPLES = [Example("arith", str(i), f"question {i}", "7", NUMBER) for i in range(3)]


def _answers(style, texts):
  return [ScoredAnswer(style, i, t, None, t.endswith("7.")) for i, t in enumerate(texts)]


SAMPLES = {
  "cot": [
    _answers("cot", ["3 + 4 = 7. The answer is 7.", "3 + 3 = 6. The answer is 6.", "Also 7. The answer is 7."]),
    _answers("cot", ["2 + 2 = 4. The answer is 4.", "The answer is 5."]),  # never correct
    _answers("cot", ["7. The answer is 7.", "7. The answer is 7."]),  # the same correct text twice
  ],
  "direct": [
    _answers("direct", ["The answer is 6."]),
    _answers("direct", ["The answer is 7."]),
    _answers("direct", ["7. The answer is 7."]),  # identical to the chosen text: never a pair
  ],
}


def test_cot_vs_direct_pairs_a_correct_cot_answer_with_a_direct_answer():
  pairs, stats = preference_pairs.build_pairs(EXAMPLES, SAMPLES, strategy="cot_vs_direct", max_pairs_per_question=4)
  assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [
    ("0", "3 + 4 = 7. The answer is 7.", "The answer is 6."),
    ("0", "Also 7. The answer is 7.", "The answer is 6."),
  ]
  assert all(p["prompt"].endswith("Let's think step by step.") and p["chosen_source"] == "student" for p in pairs)
  assert stats["questions_with_correct_cot"] == 2 and stats["questions_with_pairs"] == 1 and stats["pairs"] == 2
  assert stats["cot_correct"] == 4 and stats["cot_samples"] == 7 and stats["direct_correct"] == 2


def test_correct_vs_incorrect_and_the_cap():
  pairs, stats = preference_pairs.build_pairs(
    EXAMPLES, SAMPLES, strategy="correct_vs_incorrect", max_pairs_per_question=1
  )
  assert [(p["id"], p["chosen_sample"], p["rejected_sample"], p["rejected_style"]) for p in pairs] == [
    ("0", 0, 1, "cot")
  ]
  assert stats["pairs"] == 1
  with pytest.raises(ValueError, match="strategy"):
    preference_pairs.build_pairs(EXAMPLES, SAMPLES, strategy="best_vs_worst")


def test_teacher_fallback_only_where_the_student_has_no_correct_answer():
  demos = {("arith", "0"): "teacher says 7. The answer is 7.", ("arith", "1"): "Teacher: 3 + 4 = 7. The answer is 7."}
  pairs, stats = preference_pairs.build_pairs(EXAMPLES, SAMPLES, strategy="correct_vs_incorrect", teacher_demos=demos)
  by_question = {}
  for p in pairs:
    by_question.setdefault(p["id"], []).append(p)
  assert {p["chosen_source"] for p in by_question["0"]} == {"student"}  # the student had correct answers
  assert [(p["chosen"], p["chosen_source"]) for p in by_question["1"]] == [(demos[("arith", "1")], "teacher")] * 2
  assert stats["questions_with_teacher_chosen"] == 1 and stats["pairs_teacher_chosen"] == 2


def _scored(style, text, correct, stop="eos"):
  extracted = text.rsplit("is ", 1)[-1].rstrip(".") if "The answer is " in text and text.endswith(".") else None
  return ScoredAnswer(style, 0, text, extracted, correct, stop)


def test_rejected_answers_cut_by_length_or_prefixes_of_the_chosen_are_left_out_and_counted():
  chosen = "Omar starts with 17 coins. After giving 5 away, Omar has 17 - 5 = 12. The answer is 12."
  samples = {
    "cot": [[_scored("cot", chosen, True)]],
    "direct": [
      [
        _scored("direct", "Omar starts with 17 coins. After giving ", False, stop="length"),  # cut: never rejected
        _scored("direct", "Omar starts with 17 coins.", False),  # a prefix of the chosen text
        _scored("direct", "The answer is 15.", False),  # a flat answer: the one real pair
      ]
    ],
  }
  examples = [Example("arith", "0", "question", "12", NUMBER)]
  pairs, stats = preference_pairs.build_pairs(examples, samples, strategy="cot_vs_direct", max_pairs_per_question=4)
  assert [p["rejected"] for p in pairs] == ["The answer is 15."]
  assert stats["rejected_cut_by_length_left_out"] == 1 and stats["rejected_prefix_of_chosen_left_out"] == 1
  assert stats["direct_cut_by_length"] == 1
  assert stats["rejected_stop_reasons"] == {"eos": 1} and stats["rejected_with_stated_answer"] == 1.0
  assert stats["chosen_to_rejected_length_ratio"] == pytest.approx(len(chosen) / len("The answer is 15."))


def test_warnings_name_degenerate_pairs():
  samples = {
    "cot": [[_scored("cot", "5 + 7 = 12. The answer is 12.", True)] for _ in range(3)],
    "direct": [[_scored("direct", "Let me see", False)] for _ in range(3)],  # answers that state nothing
  }
  examples = [Example("arith", str(i), f"q{i}", "12", NUMBER) for i in range(3)]
  _, stats = preference_pairs.build_pairs(examples, samples, strategy="cot_vs_direct")
  assert any("only 3 pairs" in w for w in stats["warnings"])
  assert any("0% of rejected answers state an answer" in w for w in stats["warnings"])
  _, none = preference_pairs.build_pairs(examples, {"cot": [[]] * 3, "direct": [[]] * 3})
  assert none["warnings"] == [
    "no pair was built: the student never answered correctly and no teacher demonstration stood in"
  ]


def test_mixed_strategy_shares_the_cap_between_both_kinds():
  pairs, stats = preference_pairs.build_pairs(EXAMPLES, SAMPLES, strategy="mixed", max_pairs_per_question=2)
  assert [(p["id"], p["kind"]) for p in pairs] == [("0", "cot_vs_direct"), ("0", "correct_vs_incorrect")]
  assert stats["pairs_cot_vs_direct"] == stats["pairs_correct_vs_incorrect"] == 1


def test_spread_visits_new_answers_first():
  assert preference_pairs._spread(2, 3, 3) == [(0, 0), (0, 1), (1, 0)]
  assert len(preference_pairs._spread(3, 3, 100)) == 9


def test_held_out_split_is_by_question_and_stable():
  pairs = [{"task": "t", "id": str(i % 50)} for i in range(200)]
  train, held_out = preference_pairs.split_held_out(pairs, 0.2)
  assert not {p["id"] for p in train} & {p["id"] for p in held_out}
  assert 4 <= len({p["id"] for p in held_out}) <= 18
  assert preference_pairs.split_held_out(pairs, 0.2) == (train, held_out)


def test_read_pairs_names_bad_lines(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text(
    json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    + "\n"
    + json.dumps({"prompt": "p", "chosen": ""})
    + "\n"
  )
  with pytest.raises(ValueError, match=r"pairs\.jsonl:2: field 'chosen' is empty"):
    preference_pairs.read_pairs(path)


def test_slip_corrected_pairs_each_wrong_answer_with_its_own_correction_where_that_reaches_gold():
  examples = EXAMPLES[:2]
  cot = [
    _answers("cot", ["3 + 4 = 8. The answer is 8.", "3 + 4 = 7. The answer is 7.", "3 * 3 = 10, 10 - 4 = 6. So 6."]),
    _answers("cot", ["2 + 2 = 5. The answer is 5.", "I think 9. The answer is 9."]),  # the second: no step
  ]
  cot[0].append(ScoredAnswer("cot", 3, "3 + 5 = 9 and", None, False, "length"))  # cut by the length limit
  assert preference_pairs.slip_corrections(cot) == [(0, 0, "3 + 4 = 7"), (0, 2, "3 * 3 = 9"), (1, 0, "2 + 2 = 4")]
  corrections = [
    {
      0: ScoredAnswer("cot", 0, "3 + 4 = 7. The answer is 7.", "7", True),
      2: ScoredAnswer("cot", 2, "3 * 3 = 9, 9 - 2 = 7. So 7.", "7", True),
    },
    {0: ScoredAnswer("cot", 0, "2 + 2 = 4, 4 + 3 = 7. The answer is 7.", "7", True)},
  ]
  pairs, stats = preference_pairs.build_pairs(
    examples, {"cot": cot}, strategy="slip_corrected", max_pairs_per_question=4, corrections=corrections
  )
  assert [(p["id"], p["chosen"], p["rejected"], p["chosen_source"]) for p in pairs] == [
    ("0", "3 + 4 = 7. The answer is 7.", "3 + 4 = 8. The answer is 8.", "corrected"),
    ("0", "3 * 3 = 9, 9 - 2 = 7. So 7.", "3 * 3 = 10, 10 - 4 = 6. So 6.", "corrected"),
    ("1", "2 + 2 = 4, 4 + 3 = 7. The answer is 7.", "2 + 2 = 5. The answer is 5.", "corrected"),
  ]
  assert stats["slips_corrected"] == 3 and stats["slips_corrected_reaching_gold"] == 3
  assert stats["pairs_corrected_chosen"] == 3 and stats["pairs_slip_corrected"] == 3
  one, _ = preference_pairs.build_pairs(
    examples, {"cot": cot}, strategy="slip_corrected", max_pairs_per_question=1, corrections=corrections
  )
  assert len(one) == 2  # one a question
  corrections[0][2] = ScoredAnswer("cot", 2, "3 * 3 = 9, 9 - 4 = 5. So 5.", "5", False)  # still wrong: no pair
  fewer, stats = preference_pairs.build_pairs(
    examples, {"cot": cot}, strategy="slip_corrected", max_pairs_per_question=4, corrections=corrections
  )
  assert [p["rejected"] for p in fewer] == [pairs[0]["rejected"], pairs[2]["rejected"]]
  assert stats["slips_corrected_reaching_gold"] == 2
  demos = {("arith", "1"): "Teacher: 3 + 4 = 7. The answer is 7."}  # never a side of these pairs
  none, stats = preference_pairs.build_pairs(examples, {"cot": cot}, strategy="slip_corrected", teacher_demos=demos)
  assert none == [] and stats["slips_corrected"] == 0  # no corrections sampled: no pair
  assert stats["questions_with_teacher_chosen"] == 0
