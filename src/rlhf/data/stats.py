"""``rlhf data stats``: what a data file holds, as a table in the terminal."""

from __future__ import annotations

import statistics
from collections import Counter

from rlhf.data.curate import drop_shared_prefixes, normalise_text, prompt_text
from rlhf.data.readers import first_locations, problem_counts
from rlhf.data.records import Comparison, Demonstration


def _distribution(values: list[int]) -> str:
    if not values:
        return "–"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"min {ordered[0]}, median {statistics.median(ordered):g}, p90 {p90}, max {ordered[-1]}"


def data_stats(kind: str, records: list, tokenizer=None, prefix_chars: int = 64, pii: bool = True,
               invalid: list[tuple[str, str]] | None = None) -> dict:
    """Counts, token lengths (with ``tokenizer``), K distribution, users, duplicates and PII hits of the valid
    ``records``; and the ``invalid`` ones (``(where, problem)`` from :func:`read_any`) counted by problem, each
    with its first locations."""
    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else len(text.split())

    prompts = [prompt_text(r.prompt) for r in records]
    responses = [r.response for r in records if isinstance(r, Demonstration)] + \
        [text for r in records if isinstance(r, Comparison) for text in r.responses]
    users = Counter(r.user_id for r in records if r.user_id is not None)
    _, prefix_duplicates = drop_shared_prefixes(records, prefix_chars)
    pii_hits: Counter = Counter()
    if pii:
        from rlhf.data.pii import find_pii

        for text in prompts:
            pii_hits.update(entity for _, _, entity in find_pii(text))
    unit = "tokens" if tokenizer else "words"
    stats = {
        "kind": kind,
        "records": len(records),
        **_invalid_stats(invalid or []),
        f"prompt length ({unit})": _distribution([length(t) for t in prompts]),
        f"response length ({unit})": _distribution([length(t) for t in responses]),
        "turns per prompt": _distribution([len(r.prompt) for r in records]),
        "users": f"{len(users)} (most prompts from one user: {max(users.values(), default=0)})",
        "exact duplicate prompts": len(prompts) - len({normalise_text(t) for t in prompts}),
        f"prompts sharing a {prefix_chars}-character prefix with an earlier one": len(prefix_duplicates),
        "PII hits in prompts": ", ".join(f"{k} {v}" for k, v in pii_hits.most_common()) or "none",
    }
    if kind == "comparisons":
        ks = Counter(len(r.responses) for r in records)
        stats["K (responses per prompt)"] = ", ".join(f"K={k}: {n}" for k, n in sorted(ks.items()))
        stats["prompts with tied ranks"] = sum(len(set(r.ranks)) < len(r.ranks) for r in records)
    return stats


def _invalid_stats(invalid: list[tuple[str, str]]) -> dict:
    if not invalid:
        return {}
    rows = {"invalid records (not counted below)": len(invalid)}
    for problem, count, first in problem_counts(invalid):
        rows[f"  {problem}"] = f"{count} (first at {first_locations(count, first)})"
    return rows


def print_stats(path: str, stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(path), show_header=False)
    table.add_column("statistic", style="bold")
    table.add_column("value")
    for key, value in stats.items():
        table.add_row(key, str(value))
    Console().print(table)
