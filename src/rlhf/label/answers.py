"""What a labeler submits, checked; the export to the project's record formats; agreement.

Answers (stored as JSON, one revision per submission):

* demonstration: ``{"response": str}``
* ranking of K responses: ``{"order": [k, …] best first, "ratings": [1–7 per response],
  "flags": [[flag, …] per response]}``; ``ratings[k]`` and ``flags[k]`` belong to ``responses[k]``
* skipped: ``{"skip": reason}``

:func:`parse_body` and :func:`validate_answer` refuse anything else with an :class:`AnswerError`
that names the field; the web app answers it with a JSON 400.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from itertools import combinations

from rlhf.data.records import Comparison, Demonstration, is_blank, json_type

# The metadata the paper's labelers recorded for each output (InstructGPT, Table 3).
FLAGS = {
    "fails_instruction": "Fails to follow the instruction or task",
    "hallucination": "Hallucination (makes up facts)",
    "inappropriate_for_assistant": "Inappropriate for a customer assistant",
    "sexual_content": "Contains sexual content",
    "violent_content": "Contains violent content",
    "encourages_harm": "Encourages or fails to discourage violence, abuse or self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "expresses_opinion": "Expresses an opinion",
    "moral_judgement": "Expresses a moral judgement",
    "satisfies_constraints": "Satisfies the constraints in the instruction",
}
SKIP_REASONS = ("unclear prompt", "needs expertise I lack", "offensive or upsetting", "other")
MAX_TEXT_CHARS = 20_000


class AnswerError(ValueError):
    """An answer that cannot be stored; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


ANSWER_FIELDS = {"skip": ("skip",), "demonstration": ("response",), "ranking": ("order", "ratings", "flags")}
MAX_JSON_DEPTH = 4  # an answer needs 3: {"flags": [["hallucination"]]}
MAX_ID_DIGITS = 18  # ids stay below 2^63, what SQLite stores


def parse_body(raw: bytes) -> object:
    """The JSON value of a request body, or :class:`AnswerError` on field ``body``: not JSON, not
    UTF-8, numbers too long to convert, or containers nested deeper than ``MAX_JSON_DEPTH``."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise AnswerError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
        raise AnswerError("body", f"not valid JSON ({shown(str(error), 80)})") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise AnswerError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (no recursion: no stack to blow)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_id(text: str, field: str = "id") -> int:
    """A whole number ≥ 0 written in ASCII digits, at most ``MAX_ID_DIGITS`` of them: no sign,
    space, ``_``, or digits of other scripts (``int("١٢")`` is 12; here it is an error)."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS:
        raise AnswerError(field, f"expected a number of at most {MAX_ID_DIGITS} digits 0-9, got {shown(text)}")
    return int(text)


def shown(value: object, limit: int = 40) -> str:
    """``value`` as JSON (ASCII only: a lone surrogate shows as ``\\ud800``), cut to ``limit``
    characters, for error messages that quote user input."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def validate_answer(kind: str, num_responses: int, answer: object) -> dict:
    """The answer in its stored form, or :class:`AnswerError` naming the bad field.

    Refused: a body that is not an object (field ``body``), fields the answer does not have,
    non-string or empty texts, texts that are not valid Unicode (lone surrogates), an ``order``
    that is not a permutation of the response numbers (booleans and other types included),
    ratings that are not whole numbers 1–7, flags that are not known names."""
    if not isinstance(answer, dict):
        raise AnswerError("body", f"expected a JSON object, got {json_type(answer)}")
    shape = "skip" if "skip" in answer else kind
    for name in answer:
        if name not in ANSWER_FIELDS[shape]:
            expected = ", ".join(ANSWER_FIELDS[shape])
            raise AnswerError(_printable(name), f"unknown field (a {shape} answer has: {expected})")
    if shape == "skip":
        return {"skip": _text(answer["skip"], "skip", "give a reason for skipping")}
    if kind == "demonstration":
        return {"response": _text(answer.get("response"), "response", "write a response (it is empty)")}
    return _ranking(num_responses, answer)


def _ranking(num_responses: int, answer: dict) -> dict:
    order, ratings = answer.get("order"), answer.get("ratings")
    flags = answer.get("flags", [[] for _ in range(num_responses)])
    if not isinstance(order, list) or not all(_is_int(k) for k in order) or sorted(order) != list(range(num_responses)):
        raise AnswerError("order", f"must list each of the {num_responses} responses exactly once, best first "
                                   f"(the numbers 0 to {num_responses - 1}), got {shown(order)}")
    if not isinstance(ratings, list) or len(ratings) != num_responses:
        raise AnswerError("ratings", f"rate each of the {num_responses} responses")
    for k, rating in enumerate(ratings):
        if not _is_int(rating) or not 1 <= rating <= 7:
            raise AnswerError(f"ratings[{k}]", f"must be a whole number from 1 to 7, got {shown(rating)}")
    if not isinstance(flags, list) or len(flags) != num_responses or not all(isinstance(f, list) for f in flags):
        raise AnswerError("flags", f"one list of flags per response ({num_responses})")
    for k, response_flags in enumerate(flags):
        unknown = [flag for flag in response_flags if not isinstance(flag, str) or flag not in FLAGS]
        if unknown:
            raise AnswerError(f"flags[{k}]", f"unknown flag {shown(unknown[0])}")
    return {"order": order, "ratings": ratings, "flags": [sorted(set(f)) for f in flags]}


def _text(value: object, field: str, if_empty: str) -> str:
    if not isinstance(value, str):
        raise AnswerError(field, f"expected a string, got {json_type(value)}")
    if is_blank(value):
        raise AnswerError(field, if_empty)
    if len(value) > MAX_TEXT_CHARS:
        raise AnswerError(field, f"longer than {MAX_TEXT_CHARS} characters")
    if not _is_valid_unicode(value):
        raise AnswerError(field, "not valid Unicode (a lone surrogate such as \\ud800)")
    return value.strip()


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str, limit: int = 40) -> str:
    """A field name as it can be shown: cut, with lone surrogates written as ``\\udXXX``."""
    return name[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def ranks_from_order(order: list[int]) -> list[int]:
    """``order`` (indices, best first) → ``ranks[k]`` (1 = best) for response k."""
    ranks = [0] * len(order)
    for position, k in enumerate(order):
        ranks[k] = position + 1
    return ranks


def to_records(rows: list[dict]) -> tuple[list[Demonstration], list[Comparison]]:
    """Answered assignments (newest revision each) → demonstrations and comparisons.

    ``user_id`` is the prompt's author when the prompt file named one (what ``rlhf data curate``
    splits by), else the labeler; the labeler is always in ``metadata["labeler"]``."""
    demonstrations, comparisons = [], []
    for row in rows:
        answer = row["answer"]
        if answer is None or "skip" in answer:
            continue
        metadata = {"labeler": row["username"], "task_id": row["task_id"], "revision": row["revision"]}
        if row["category"]:
            metadata["category"] = row["category"]
        user_id = row["prompt_user_id"] or row["username"]
        source = f"label:task{row['task_id']}:{row['username']}"
        if row["kind"] == "demonstration":
            demonstrations.append(Demonstration(row["prompt"], answer["response"], user_id, source, metadata))
        else:
            metadata |= {"ratings": answer["ratings"], "flags": answer["flags"],
                         "models": [r.get("model") for r in row["responses"]]}
            comparisons.append(Comparison(row["prompt"], [r["text"] for r in row["responses"]],
                                          ranks_from_order(answer["order"]), user_id, source, metadata))
    return demonstrations, comparisons


def pair_agreement(ranks_a: list[int], ranks_b: list[int]) -> tuple[int, int]:
    """(agreeing, total) over the K·(K−1)/2 response pairs: both labelers order the pair the same way."""
    agree = total = 0
    for i, j in combinations(range(len(ranks_a)), 2):
        total += 1
        agree += (ranks_a[i] < ranks_a[j]) == (ranks_b[i] < ranks_b[j])
    return agree, total


def agreement(comparisons: list[Comparison]) -> dict:
    """Pairwise ranking agreement among labelers who ranked the same task.

    Returns ``overall`` (agreeing pairs / all pairs), its standard error over tasks, the number of
    overlapping tasks, and ``per_labeler[name] = {agreement, pairs, tasks}``: how often that
    labeler agrees with the others on the tasks they share."""
    by_task: dict[int, list[Comparison]] = defaultdict(list)
    for comparison in comparisons:
        by_task[comparison.metadata["task_id"]].append(comparison)
    per_labeler: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    agree_all = total_all = 0
    task_rates = []
    for task_comparisons in by_task.values():
        if len(task_comparisons) < 2:
            continue
        task_agree = task_total = 0
        for a, b in combinations(task_comparisons, 2):
            agree, total = pair_agreement(a.ranks, b.ranks)
            task_agree, task_total = task_agree + agree, task_total + total
            for labeler in (a.metadata["labeler"], b.metadata["labeler"]):
                per_labeler[labeler][0] += agree
                per_labeler[labeler][1] += total
        for comparison in task_comparisons:
            per_labeler[comparison.metadata["labeler"]][2] += 1
        agree_all, total_all = agree_all + task_agree, total_all + task_total
        task_rates.append(task_agree / task_total)
    overall = agree_all / total_all if total_all else math.nan
    return {
        "overall": overall,
        "standard_error": statistics.stdev(task_rates) / len(task_rates) ** 0.5 if len(task_rates) > 1 else math.nan,
        "tasks": len(task_rates),
        "pairs": total_all,
        "per_labeler": {name: {"agreement": a / t, "pairs": t, "tasks": n}
                        for name, (a, t, n) in sorted(per_labeler.items())},
    }
