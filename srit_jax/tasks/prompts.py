"""Prompts in the paper's style: an instruction, the question, its options, then either the
zero-shot-CoT trigger "Let's think step by step." or a request for the bare answer. Few-shot
evaluation puts worked examples before the question (`shot`): each a prompt of the same style
and its answer (the dataset's worked solution, or the bare answer sentence)."""

from __future__ import annotations

from srit_jax.tasks.example import CHOICE, LATEX, LETTERS, NUMBER, Example

COT_TRIGGER = "Let's think step by step."
COT = "cot"
DIRECT = "direct"
STYLES = (COT, DIRECT)

_INSTRUCTIONS = {
  NUMBER: "Answer the following math word problem.",
  CHOICE: "Choose the answer to the following question from the options {letters}.",
  LATEX: "Solve the following math problem.",
}
_ANSWER_FORMATS = {
  NUMBER: 'End with "The answer is N", where N is a number.',
  CHOICE: 'End with "The answer is (X)", where X is the letter of the option.',
  LATEX: "Put the final answer in \\boxed{}.",
}
_DIRECT_FORMATS = {
  NUMBER: 'Reply only with "The answer is N", where N is a number, and no explanation.',
  CHOICE: 'Reply only with "The answer is (X)", where X is the letter of the option, and no explanation.',
  LATEX: "Reply only with the final answer in \\boxed{}, and no explanation.",
}


def instruction(example: Example) -> str:
  letters = ", ".join(LETTERS[: len(example.choices)])
  return _INSTRUCTIONS[example.answer_type].format(letters=letters)


def question_block(example: Example) -> str:
  text = f"Question: {example.question.strip()}"
  if example.answer_type == CHOICE:
    text += "\nChoices:\n" + "\n".join(f"({letter}) {c}" for letter, c in zip(LETTERS, example.choices))
  return text


def prompt(example: Example, style: str = COT) -> str:
  """The user message for `example`: CoT (the trigger closes it) or direct answer."""
  if style == COT:
    return (
      f"{instruction(example)}\n\n{question_block(example)}\n\n{_ANSWER_FORMATS[example.answer_type]}\n{COT_TRIGGER}"
    )
  if style == DIRECT:
    return f"{instruction(example)}\n\n{question_block(example)}\n\n{_DIRECT_FORMATS[example.answer_type]}"
  raise ValueError(f"prompt style {style!r} is not one of {STYLES}")


# The assistant turn of a direct answer opens with these words, so that the model answers at
# once instead of starting a chain of thought that the length limit would cut.
_DIRECT_OPENINGS = {NUMBER: "The answer is", CHOICE: "The answer is (", LATEX: "The answer is $\\boxed{"}


def response_prefix(example: Example, style: str = COT) -> str:
  """Text the assistant's answer starts with (generation continues it): "" for CoT, the answer
  phrase for direct answers."""
  return _DIRECT_OPENINGS[example.answer_type] if style == DIRECT else ""


# A direct answer is its first sentence: an instructed student that goes on after "The answer
# is 42." (into the reasoning it was taught to give) has answered by then.
_DIRECT_STOPS = ("\n", ". ")


def stop_strings(style: str, configured=()) -> tuple[str, ...]:
  """Where generation of a `style` answer ends: the configured stop strings, and for direct
  answers the end of their first sentence."""
  return tuple(configured) + (_DIRECT_STOPS if style == DIRECT else ())


def answer_sentence(example: Example, answer: str) -> str:
  """The closing sentence the prompts ask for, for a given answer."""
  if example.answer_type == CHOICE:
    return f"The answer is ({answer})."
  if example.answer_type == LATEX:
    return f"The answer is $\\boxed{{{answer}}}$."
  return f"The answer is {answer}."


def shot(example: Example, style: str = COT) -> dict[str, str]:
  """A worked example shown before the question: its prompt and its answer, in `style`. A CoT
  answer is the example's worked solution, closed by the answer sentence the prompt asks for
  where the solution does not already hold it; examples without a solution cannot show CoT."""
  if style == DIRECT:
    return {"prompt": prompt(example, DIRECT), "answer": answer_sentence(example, example.gold)}
  solution = example.solution.strip()
  if not solution:
    raise ValueError(
      f"{example.task}/{example.id}: has no worked solution to show as a chain-of-thought example "
      f"(few-shot CoT needs a task whose training split has them: GSM8K, AQuA, MATH, the built-in tasks)"
    )
  closing = answer_sentence(example, example.gold)
  if closing.rstrip(".").lower() not in solution.lower():  # "Therefore, the answer is 76." holds it
    solution += ("" if solution.endswith((".", "\n")) else ".") + " " + closing
  return {"prompt": prompt(example, COT), "answer": solution}
