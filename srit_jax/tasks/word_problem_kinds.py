"""The kinds of word problem behind srit_jax/tasks/word_problems.py's tasks: each a maker that
turns one random draw (names, items, numbers, wording) and a phrasing index into a `Problem`,
with its worked solution and the arithmetic `expression` that gives its answer.

Training kinds come in `PHRASINGS` phrasings, the last held out of training; held-out kinds
never train; hard kinds chain two or three of the training kinds' steps.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

NAMES = (
  "Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Kara", "Leo", "Maya", "Noah",
  "Olivia", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wes", "Yara", "Zane", "Aisha", "Carlos",
  "Mei", "Tomas", "Nina",
)  # fmt: skip
ITEMS = (  # (plural, price range in dollars)
  ("notebooks", (2, 6)), ("apples", (1, 3)), ("pencils", (1, 2)), ("books", (5, 15)), ("toy cars", (3, 9)),
  ("cupcakes", (2, 4)), ("stickers", (1, 2)), ("tickets", (4, 12)), ("shirts", (8, 20)), ("plants", (3, 10)),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Problem:
  question: str
  solution: str
  answer: int
  expression: str  # arithmetic over the problem's numbers that gives `answer`


class Draw:
  """The random choices of one problem: names, items, numbers and wording."""

  def __init__(self, rng: random.Random):
    self.rng = rng
    self.names = rng.sample(NAMES, 3)
    self.item, self.price_range = rng.choice(ITEMS)

  def num(self, low: int, high: int) -> int:
    return self.rng.randint(low, high)

  def pick(self, *options: str) -> str:
    return self.rng.choice(options)


def _answer(d: Draw, value: int) -> str:
  return d.pick(f"The answer is {value}.", f"So the answer is {value}.", f"Therefore, the answer is {value}.")


# --- Training kinds: (question phrasings, ...) -> Problem -----------------------------------
# Each maker takes the draw and the phrasing index; the last phrasing is held out of training.


def unit_price(d: Draw, phrasing: int) -> Problem:
  a, item = d.names[0], d.item
  n, price = d.num(3, 12), d.num(*d.price_range)
  bill = next(b for b in (10, 20, 50, 100, 200, 500) if b >= n * price)
  question = [
    f"{a} buys {n} {item} that cost ${price} each and pays with a ${bill} bill. How much change does {a} get?",
    f"Each of the {item} at the store costs ${price}. {a} needs {n} of them and hands the cashier ${bill}. "
    f"How many dollars should {a} get back?",
    f"With a ${bill} bill, {a} paid for {n} {item} priced at ${price} apiece. What was the change, in dollars?",
  ][phrasing]
  cost = n * price
  steps = [
    d.pick(f"The {item} cost {n} * {price} = ${cost}.", f"{a} spends {n} x ${price} = ${cost} on the {item}."),
    d.pick(f"The change is {bill} - {cost} = ${bill - cost}.", f"So {a} gets back {bill} - {cost} = ${bill - cost}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, bill - cost)]), bill - cost, f"{bill} - {n} * {price}")


def rate_distance(d: Draw, phrasing: int) -> Problem:
  a = d.names[0]
  v1, t1, v2, t2 = d.num(20, 60), d.num(2, 5), d.num(20, 60), d.num(1, 4)
  question = [
    f"{a} drives at {v1} miles per hour for {t1} hours and then at {v2} miles per hour for {t2} hours. "
    f"How many miles does {a} drive in total?",
    f"A train travels {t1} hours at {v1} mph, then slows to {v2} mph for another {t2} hours. "
    "What total distance does it cover, in miles?",
    f"For {t1} hours {a} cycled at {v1} miles per hour, and for the next {t2} hours at {v2} miles per hour. "
    f"How far did {a} go altogether?",
  ][phrasing]
  first, second = v1 * t1, v2 * t2
  steps = [
    d.pick(f"The first part is {v1} * {t1} = {first} miles.", f"First, {t1} hours at {v1} mph is {first} miles."),
    d.pick(f"The second part is {v2} * {t2} = {second} miles.", f"Then {t2} hours at {v2} mph adds {second} miles."),
    d.pick(f"In total that is {first} + {second} = {first + second} miles.", f"{first} + {second} = {first + second}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, first + second)]), first + second, f"{v1} * {t1} + {v2} * {t2}")


def sharing(d: Draw, phrasing: int) -> Problem:
  a, item = d.names[0], d.item
  k = d.num(3, 8)
  each, left = d.num(3, 12), d.num(1, k - 1)
  total = k * each + left
  question = [
    f"{a} has {total} {item} and shares them equally among {k} friends, giving each friend as many as possible. "
    f"How many {item} are left over?",
    f"There are {total} {item} to split evenly between {k} children, with whole {item} only. How many remain?",
    f"{a} packs {total} {item} into {k} boxes with the same number in each box and as many per box as possible. "
    f"How many {item} do not fit in the boxes?",
  ][phrasing]
  steps = [
    d.pick(f"{total} / {k} = {each} with a remainder of {left}.", f"Each gets {total} // {k} = {each} {item}."),
    d.pick(
      f"That uses {k} * {each} = {k * each}, so {total} - {k * each} = {left} are left.",
      f"{k} * {each} = {k * each} are given out, leaving {total} - {k * each} = {left}.",
    ),
  ]
  return Problem(question, " ".join([*steps, _answer(d, left)]), left, f"{total} - {k} * {each}")


def comparison(d: Draw, phrasing: int) -> Problem:
  a, b, item = d.names[0], d.names[1], d.item
  x, times, more = d.num(4, 20), d.num(2, 4), d.num(3, 15)
  y = x * times + more
  question = [
    f"{a} has {x} {item}. {b} has {more} more than {times} times as many {item} as {a}. "
    f"How many {item} do they have together?",
    f"{b} owns {more} more {item} than {times} times what {a} owns. If {a} owns {x}, how many {item} do the two "
    "own in all?",
    f"The number of {item} {b} has is {times} times {a}'s number plus {more}. {a} has {x}. "
    f"What is their combined number of {item}?",
  ][phrasing]
  steps = [
    d.pick(f"{times} times as many as {a} is {times} * {x} = {x * times}.", f"{times} * {x} = {x * times}."),
    d.pick(f"{b} has {x * times} + {more} = {y} {item}.", f"Adding {more} gives {b} {x * times} + {more} = {y}."),
    d.pick(f"Together they have {x} + {y} = {x + y}.", f"So {x} + {y} = {x + y} {item} in all."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, x + y)]), x + y, f"{x} + {x} * {times} + {more}")


def transfers(d: Draw, phrasing: int) -> Problem:
  a, b, c, item = *d.names, d.item
  x, y = d.num(10, 40), d.num(10, 40)
  give = d.num(2, x - 2)
  half_total = y + give
  if half_total % 2:
    give += 1 if give < x - 1 else -1
    half_total = y + give
  question = [
    f"{a} has {x} {item} and {b} has {y}. {a} gives {give} {item} to {b}. Then {b} gives half of all {b}'s "
    f"{item} to {c}. How many {item} does {b} have now?",
    f"At first {b} owns {y} {item} and {a} owns {x}. After receiving {give} {item} from {a}, {b} hands half of "
    f"them to {c}. How many {item} does {b} keep?",
    f"{b} starts with {y} {item}. {a}, who has {x}, passes {give} of them to {b}, and then {b} splits {b}'s "
    f"{item} evenly with {c}. How many {item} end up with {b}?",
  ][phrasing]
  steps = [
    d.pick(f"After the gift {b} has {y} + {give} = {half_total}.", f"{b} now has {y} + {give} = {half_total}."),
    d.pick(f"Half of {half_total} is {half_total} / 2 = {half_total // 2}.", f"{half_total} / 2 = {half_total // 2}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, half_total // 2)]), half_total // 2, f"({y} + {give}) / 2")


def reading(d: Draw, phrasing: int) -> Problem:
  a = d.names[0]
  per_day, days = d.num(5, 30), d.num(3, 9)
  pages = per_day * days + d.num(10, 120)
  question = [
    f"A book has {pages} pages. {a} reads {per_day} pages every day. How many pages are left after {days} days?",
    f"{a} reads {per_day} pages a day from a {pages}-page novel. After {days} days, how many pages remain unread?",
    f"To finish a {pages}-page book, {a} reads {per_day} pages daily. How many pages does {a} still have to read "
    f"after {days} days?",
  ][phrasing]
  read = per_day * days
  steps = [
    d.pick(f"In {days} days {a} reads {per_day} * {days} = {read} pages.", f"{days} * {per_day} = {read} pages read."),
    d.pick(f"So {pages} - {read} = {pages - read} pages are left.", f"{pages} - {read} = {pages - read} remain."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, pages - read)]), pages - read, f"{pages} - {per_day} * {days}")


def shopping_with_distractor(d: Draw, phrasing: int) -> Problem:
  a, item = d.names[0], d.item
  n, price, extra, age = d.num(2, 9), d.num(*d.price_range), d.num(2, 15), d.num(9, 60)
  total = n * price + extra
  question = [
    f"{a} is {age} years old. {a} buys {n} {item} at ${price} each and a bag for ${extra}. "
    f"How much does {a} spend in all?",
    f"On a trip to a shop {a}, who is {age}, picked up {n} {item} costing ${price} each plus a ${extra} bag. "
    "What was the total bill?",
    f"{a} spent ${extra} on a bag and also bought {n} {item} for ${price} apiece. {a} has {age} stamps at home. "
    f"How many dollars did {a} spend?",
  ][phrasing]
  steps = [
    d.pick(f"The {item} cost {n} * {price} = ${n * price}.", f"{n} {item} at ${price} is {n * price} dollars."),
    d.pick(f"With the bag it is {n * price} + {extra} = ${total}.", f"{n * price} + {extra} = {total}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, total)]), total, f"{n} * {price} + {extra}")


def savings(d: Draw, phrasing: int) -> Problem:
  a = d.names[0]
  weekly, weeks = d.num(5, 25), d.num(3, 10)
  spend = d.num(5, weekly * weeks - 1)
  question = [
    f"{a} saves ${weekly} every week. After {weeks} weeks, {a} spends ${spend} on a gift. How much money is left?",
    f"Every week {a} puts ${weekly} in a jar. At the end of {weeks} weeks {a} takes out ${spend}. "
    "How many dollars remain in the jar?",
    f"{a} spent ${spend} from savings built up over {weeks} weeks at ${weekly} per week. What is left?",
  ][phrasing]
  saved = weekly * weeks
  steps = [
    d.pick(f"{a} saves {weekly} * {weeks} = ${saved}.", f"After {weeks} weeks there is {weeks} * {weekly} = ${saved}."),
    d.pick(f"Then {saved} - {spend} = ${saved - spend} is left.", f"{saved} - {spend} = {saved - spend}."),
  ]
  return Problem(
    question, " ".join([*steps, _answer(d, saved - spend)]), saved - spend, f"{weekly} * {weeks} - {spend}"
  )


# --- Kinds held out of training --------------------------------------------------------------


def ages(d: Draw, phrasing: int) -> Problem:
  a, b = d.names[0], d.names[1]
  x, older, later = d.num(5, 30), d.num(2, 12), d.num(2, 15)
  age = x + older + later
  question = [
    f"{a} is {x} years old. {b} is {older} years older than {a}. How old will {b} be in {later} years?",
    f"{b} was born {older} years before {a}, who is {x} now. What age will {b} reach {later} years from now?",
  ][phrasing % 2]
  steps = [
    d.pick(f"{b} is {x} + {older} = {x + older} now.", f"Now {b} is {x + older} years old."),
    d.pick(f"In {later} years {b} will be {x + older} + {later} = {age}.", f"{x + older} + {later} = {age}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, age)]), age, f"{x} + {older} + {later}")


def percent_off(d: Draw, phrasing: int) -> Problem:
  item = d.item[:-1] if d.item.endswith("s") else d.item
  percent = d.pick("10", "20", "25", "50")
  price = d.num(2, 20) * {"10": 10, "20": 5, "25": 4, "50": 2}[percent]
  off = price * int(percent) // 100
  question = [
    f"A {item} costs ${price}. It is on sale for {percent}% off. What is the sale price in dollars?",
    f"The shop takes {percent}% off a ${price} {item}. How much does the {item} cost now?",
  ][phrasing % 2]
  steps = [
    d.pick(f"{percent}% of {price} is {price} * {percent} / 100 = {off}.", f"The discount is {off} dollars."),
    d.pick(f"The sale price is {price} - {off} = ${price - off}.", f"{price} - {off} = {price - off}."),
  ]
  return Problem(
    question, " ".join([*steps, _answer(d, price - off)]), price - off, f"{price} - {price} * {percent} / 100"
  )


def fractions(d: Draw, phrasing: int) -> Problem:
  a, b, item = d.names[0], d.names[1], d.item
  denominator = d.pick("2", "3", "4", "5")
  k = int(denominator)
  total = k * d.num(3, 15)
  given = total // k
  question = [
    f"{a} had {total} {item} and gave 1/{k} of them to {b}. How many {item} does {a} have left?",
    f"Of {a}'s {total} {item}, one in every {k} went to {b}. How many did {a} keep?",
  ][phrasing % 2]
  steps = [
    d.pick(f"1/{k} of {total} is {total} / {k} = {given}.", f"{a} gave away {total} / {k} = {given}."),
    d.pick(f"{total} - {given} = {total - given} are left.", f"So {a} keeps {total} - {given} = {total - given}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, total - given)]), total - given, f"{total} - {total} / {k}")


def units(d: Draw, phrasing: int) -> Problem:
  a = d.names[0]
  feet, inches = d.num(2, 9), d.num(1, 11)
  length = feet * 12 + inches
  question = [
    f"A board is {feet} feet {inches} inches long. With 12 inches in a foot, how long is it in inches?",
    f"{a} is {feet} feet and {inches} inches tall. How many inches is that, with 12 inches in a foot?",
  ][phrasing % 2]
  steps = [
    d.pick(f"{feet} feet is {feet} * 12 = {feet * 12} inches.", f"{feet} * 12 = {feet * 12}."),
    d.pick(f"Adding {inches} gives {feet * 12} + {inches} = {length}.", f"{feet * 12} + {inches} = {length}."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, length)]), length, f"{feet} * 12 + {inches}")


# --- Harder compositions: three or four steps that chain training kinds --------------------


def savings_then_shopping(d: Draw, phrasing: int) -> Problem:
  a, item = d.names[0], d.item
  weekly, weeks = d.num(5, 20), d.num(3, 8)
  saved = weekly * weeks
  price = d.num(*d.price_range)
  n = d.num(1, max(1, saved // price - 1))
  question = [
    f"{a} saves ${weekly} a week for {weeks} weeks and then buys {n} {item} at ${price} each. "
    f"How many dollars does {a} have left?",
    f"After putting away ${weekly} every week for {weeks} weeks, {a} spends some of it on {n} {item} that cost "
    f"${price} apiece. How much of the savings remains?",
  ][phrasing % 2]
  spent, left = n * price, saved - n * price
  steps = [
    d.pick(f"{a} saves {weekly} * {weeks} = ${saved}.", f"The savings come to {weeks} * {weekly} = ${saved}."),
    d.pick(f"The {item} cost {n} * {price} = ${spent}.", f"{n} {item} at ${price} each is {spent} dollars."),
    d.pick(f"{saved} - {spent} = ${left} is left.", f"So {a} has {saved} - {spent} = {left} dollars left."),
  ]
  return Problem(question, " ".join([*steps, _answer(d, left)]), left, f"{weekly} * {weeks} - {n} * {price}")


def trip_left(d: Draw, phrasing: int) -> Problem:
  a = d.names[0]
  v1, t1, v2, t2 = d.num(20, 60), d.num(1, 4), d.num(20, 60), d.num(1, 3)
  driven = v1 * t1 + v2 * t2
  trip = driven + d.num(10, 150)
  question = [
    f"{a} is on a {trip}-mile trip. {a} drives {t1} hours at {v1} miles per hour and then {t2} hours at {v2} "
    f"miles per hour. How many miles of the trip are left?",
    f"A bus must cover {trip} miles. It goes {v1} mph for {t1} hours, then {v2} mph for {t2} hours. "
    "How much farther does it still have to go?",
  ][phrasing % 2]
  steps = [
    d.pick(f"First {v1} * {t1} = {v1 * t1} miles.", f"The first leg is {t1} * {v1} = {v1 * t1} miles."),
    d.pick(f"Then {v2} * {t2} = {v2 * t2} miles.", f"The second leg is {t2} * {v2} = {v2 * t2} miles."),
    d.pick(f"That makes {v1 * t1} + {v2 * t2} = {driven} miles.", f"{v1 * t1} + {v2 * t2} = {driven} miles so far."),
    d.pick(f"{trip} - {driven} = {trip - driven} miles are left.", f"So {trip} - {driven} = {trip - driven} remain."),
  ]
  return Problem(
    question, " ".join([*steps, _answer(d, trip - driven)]), trip - driven, f"{trip} - ({v1} * {t1} + {v2} * {t2})"
  )


def packs_shared(d: Draw, phrasing: int) -> Problem:
  a, item = d.names[0], d.item
  friends, packs, per_pack = d.num(2, 6), d.num(2, 6), int(d.pick("4", "5", "6", "8"))
  own = (-packs * per_pack) % friends + friends * d.num(0, 2) or friends  # the total splits evenly
  question = [
    f"{a} already has {own} {item} and buys {packs} packs of {per_pack}. {a} shares all of them equally among "
    f"{friends} friends. How many {item} does each friend get?",
    f"With {own} {item} of {a}'s own plus {packs} packs holding {per_pack} each, {a} gives every one of {friends} "
    f"friends the same number. How many does each get?",
  ][phrasing % 2]
  bought = packs * per_pack
  total = own + bought
  steps = [
    d.pick(f"The packs hold {packs} * {per_pack} = {bought}.", f"{packs} packs of {per_pack} is {bought} {item}."),
    d.pick(f"In all there are {own} + {bought} = {total}.", f"{a} has {own} + {bought} = {total} {item}."),
    d.pick(f"Each friend gets {total} / {friends} = {total // friends}.", f"{total} / {friends} = {total // friends}."),
  ]
  return Problem(
    question,
    " ".join([*steps, _answer(d, total // friends)]),
    total // friends,
    f"({own} + {packs} * {per_pack}) / {friends}",
  )


def compare_then_give(d: Draw, phrasing: int) -> Problem:
  a, b, c, item = *d.names, d.item
  x, times, more = d.num(3, 15), d.num(2, 3), d.num(1, 9)
  y = x * times + more
  give = d.num(1, y - 1)
  question = [
    f"{a} has {x} {item}. {b} has {more} more than {times} times as many as {a}. {b} then gives {give} {item} "
    f"to {c}. How many {item} do {a} and {b} have together now?",
    f"{b}'s {item} number {times} times {a}'s {x}, plus {more}. After {b} hands {give} of them to {c}, "
    f"how many {item} do {a} and {b} hold between them?",
  ][phrasing % 2]
  steps = [
    d.pick(f"{times} * {x} = {x * times}.", f"{times} times {a}'s {item} is {x * times}."),
    d.pick(f"{b} has {x * times} + {more} = {y}.", f"Plus {more} makes {y} for {b}."),
    d.pick(f"After giving {give} away, {b} has {y} - {give} = {y - give}.", f"{y} - {give} = {y - give}."),
    d.pick(f"Together: {x} + {y - give} = {x + y - give}.", f"{x} + {y - give} = {x + y - give} in all."),
  ]
  total = x + y - give
  return Problem(question, " ".join([*steps, _answer(d, total)]), total, f"{x} + {x} * {times} + {more} - {give}")


Maker = Callable[[Draw, int], Problem]
TRAINING_KINDS: dict[str, Maker] = {
  "unit_price": unit_price,
  "rate_distance": rate_distance,
  "sharing": sharing,
  "comparison": comparison,
  "transfers": transfers,
  "reading": reading,
  "shopping_with_distractor": shopping_with_distractor,
  "savings": savings,
}
HELD_OUT_KINDS: dict[str, Maker] = {"ages": ages, "percent_off": percent_off, "fractions": fractions, "units": units}
HARD_KINDS: dict[str, Maker] = {
  "savings_then_shopping": savings_then_shopping,
  "trip_left": trip_left,
  "packs_shared": packs_shared,
  "compare_then_give": compare_then_give,
}
PHRASINGS = 3  # per training kind; phrasing 2 is held out of training
