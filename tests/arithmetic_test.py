"""Arithmetic steps read from worked answers and recomputed (srit_jax/tasks/arithmetic.py)."""

import pytest

from srit_jax.tasks import arithmetic, word_problems


def _read(text: str) -> list[tuple[str, str, bool]]:
  return [(s.expression, s.stated, s.correct) for s in arithmetic.written_steps(text)]


@pytest.mark.parametrize(
  "text, steps",
  [
    ("The books cost 4 * 8 = $32. With the bag it is 32 + 13 = $45.", [("4 * 8", "32", True), ("32 + 13", "45", True)]),
    (
      "After 8 weeks there is 8 * 13 = $116. Then 116 - 88 = $32 is left.",
      [("8 * 13", "116", False), ("116 - 88", "32", False)],
    ),
    ("Dan spends 7 x $6 = $45 on the notebooks.", [("7 x $6", "45", False)]),
    ("(3 + 4) * 2 = 14, and 1,200 / 4 = 300.", [("(3 + 4) * 2", "14", True), ("1,200 / 4", "300", True)]),
    ("10 / 3 = 3.33 but 10 / 3 = 3", [("10 / 3", "3.33", True), ("10 / 3", "3", False)]),  # rounded, truncated
    ("37 / 4 = 9 with a remainder of 1, so 10 // 3 = 3", [("37 / 4", "9", True), ("10 // 3", "3", True)]),
    (
      "50 * 20% = 10 and 5 - 9 = -4 and 6 × 7 = 42 and 8 ÷ 2 = 4",
      [("50 * 20%", "10", True), ("5 - 9", "-4", True), ("6 × 7", "42", True), ("8 ÷ 2", "4", True)],
    ),
    # Not steps: a clock time, a leading minus, a product written in words, an unbalanced bracket.
    ("At 12:30 + 5 = 6, -3 + 5 = 2, half of 10 is 5, (3 + 4 = 7", []),
    ("3 + 4 = 7 + 1 = 8", [("3 + 4", "7", True)]),  # a chain: only its first step
    ("1 / 0 = 1", []),
  ],
)
def test_steps_are_read_and_recomputed(text, steps):
  assert _read(text) == steps


def test_the_generators_own_solutions_have_no_slip():
  # The word problems' reference solutions are computed, so every step they write is right.
  examples = [
    e for task in ("wordmath", "wordmath_ood", "wordmath_hard") for e in word_problems.generate(task, "test", size=200)
  ]
  read = [arithmetic.slips(e.solution) for e in examples]
  assert sum(steps for steps, _ in read) >= len(examples)  # the checker reads their steps
  assert [wrong for _, wrong in read] == [0] * len(examples)


def test_profile_counts_answers_with_a_slip_and_the_accuracy_of_the_others():
  answers = [
    ("2 + 2 = 4. The answer is 4.", True),
    ("2 + 2 = 5. The answer is 5.", False),
    ("2 * 3 = 7, 7 - 1 = 6. The answer is 6.", True),  # right by luck: still a slip
    ("It is 9. The answer is 9.", False),  # no step written
  ]
  assert arithmetic.profile(answers) == {
    "answers": 4,
    "answers_with_slip": 2,
    "slip_share": 0.5,
    "accuracy_without_slip": 0.5,
    "steps_per_answer": 1.0,
  }


def test_the_first_wrong_step_is_set_right_and_the_rest_cut():
  text = "After 8 weeks there is 8 * 13 = $116. Then 116 - 88 = $32 is left. The answer is 32."
  assert arithmetic.corrected_prefix(text) == "After 8 weeks there is 8 * 13 = $104"
  assert arithmetic.corrected_prefix("2 + 2 = 4, 10 / 4 = 2 each.") == "2 + 2 = 4, 10 / 4 = 2.5"
  assert arithmetic.corrected_prefix("5 - 9 = 4.") == "5 - 9 = -4"
  assert arithmetic.corrected_prefix("2 + 2 = 4. The answer is 4.") is None
  assert [arithmetic.number_text(v) for v in (104.0, 2.5, 10 / 3, -4.0, 0.1 + 0.2)] == [
    "104",
    "2.5",
    "3.33",
    "-4",
    "0.3",
  ]
