"""What a labeler submits, checked; the export to the project's record formats; agreement.

Answers (stored as JSON, one revision per submission):

* demonstration: ``{"response": str}``
* ranking of K responses: ``{"order": [k, …] best first, "ratings": [1–7 per response],
  "flags": [[flag, …] per response]}``; ``ratings[k]`` and ``flags[k]`` belong to ``responses[k]``
* skipped: ``{"skip": reason}``
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from itertools import combinations

from rlhf.data.records import Comparison, Demonstration

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


def validate_answer(kind: str, num_responses: int, answer: dict) -> dict:
    """The answer in its stored form, or :class:`AnswerError` naming the bad field."""
    if not isinstance(answer, dict):
        raise AnswerError("answer", "expected an object")
    if "skip" in answer:
        reason = answer["skip"]
        if not isinstance(reason, str) or not reason.strip():
            raise AnswerError("skip", "give a reason for skipping")
        return {"skip": _text(reason, "skip")}
    if kind == "demonstration":
        response = answer.get("response")
        if not isinstance(response, str) or not response.strip():
            raise AnswerError("response", "write a response (it is empty)")
        return {"response": _text(response, "response")}
    order, ratings = answer.get("order"), answer.get("ratings")
    flags = answer.get("flags", [[] for _ in range(num_responses)])
    if not isinstance(order, list) or sorted(order) != list(range(num_responses)) \
            or not all(isinstance(k, int) for k in order):
        raise AnswerError("order", f"must list each of the {num_responses} responses exactly once, best first")
    if not isinstance(ratings, list) or len(ratings) != num_responses:
        raise AnswerError("ratings", f"rate each of the {num_responses} responses")
    for k, rating in enumerate(ratings):
        if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 7:
            raise AnswerError(f"ratings[{k}]", f"must be a whole number from 1 to 7, got {rating!r}")
    if not isinstance(flags, list) or len(flags) != num_responses or not all(isinstance(f, list) for f in flags):
        raise AnswerError("flags", f"one list of flags per response ({num_responses})")
    for k, response_flags in enumerate(flags):
        unknown = [flag for flag in response_flags if flag not in FLAGS]
        if unknown:
            raise AnswerError(f"flags[{k}]", f"unknown flag {unknown[0]!r}")
    return {"order": order, "ratings": ratings, "flags": [sorted(set(f)) for f in flags]}


def _text(value: str, field: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise AnswerError(field, f"longer than {MAX_TEXT_CHARS} characters")
    return value.strip()


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
