"""The paper's data curation (Ouyang et al. 2022, §3.2 and App. A), in its order:

1. drop prompts that share a long common prefix with an earlier one (near-duplicates);
2. cap the number of prompts per user (paper: 200);
3. split train / valid / test by user, so no user is in two splits;
4. scrub PII from prompts, replacing it with typed placeholders.

Outputs are canonical JSONL, written to a staging folder and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlhf.data.collate import check_split_fractions, split_records
from rlhf.data.records import Comparison, Conversation, DataError, Demonstration
from rlhf.outputs import Earlier, output_folder

logger = logging.getLogger(__name__)


def prompt_text(conversation: Conversation) -> str:
    return "\n".join(message["content"] for message in conversation)


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def drop_shared_prefixes(records: list, prefix_chars: int) -> tuple[list, list[tuple[str, str]]]:
    """Keep the first record of each group of prompts sharing their first ``prefix_chars`` characters
    (after lower-casing and collapsing whitespace; shorter prompts must match exactly).
    Returns (kept, [(dropped source, source of the earlier prompt it duplicates)])."""
    first_seen: dict[str, str] = {}
    kept, dropped = [], []
    for record in records:
        key = normalise_text(prompt_text(record.prompt))[:prefix_chars]
        if key in first_seen:
            dropped.append((record.source, first_seen[key]))
            continue
        first_seen[key] = record.source
        kept.append(record)
    return kept, dropped


def cap_per_user(records: list, max_per_user: int) -> tuple[list, int]:
    """Keep each user's first ``max_per_user`` records (records without a user are not capped)."""
    seen: Counter = Counter()
    kept = []
    for record in records:
        if record.user_id is not None:
            seen[record.user_id] += 1
            if seen[record.user_id] > max_per_user:
                continue
        kept.append(record)
    return kept, len(records) - len(kept)


def scrub_prompt(record, counts: Counter):
    from rlhf.data.pii import scrub

    return replace(record, prompt=[{**m, "content": scrub(m["content"], counts)} for m in record.prompt])


def to_canonical(record) -> dict:
    """A record as the canonical JSON object the readers accept back."""
    prompt = record.prompt[0]["content"] if len(record.prompt) == 1 and record.prompt[0]["role"] == "user" \
        else record.prompt
    row: dict = {"prompt": prompt}
    if isinstance(record, Demonstration):
        row["response"] = record.response
    elif isinstance(record, Comparison):
        row["responses"] = [{"text": text, "rank": rank} for text, rank in zip(record.responses, record.ranks)]
    if record.metadata:
        row["metadata"] = record.metadata
    if record.user_id is not None:
        row["user_id"] = record.user_id
    if getattr(record, "category", None) is not None:
        row["category"] = record.category
    return row


def comparison_pairs(comparison: Comparison) -> list[dict]:
    """K-way ranking → every ordered ``prompt/chosen/rejected`` pair (ties make none), for consumers
    that only take pairs; the project's own reward model keeps rankings grouped."""
    pairs = []
    for i, (better, rank_better) in enumerate(zip(comparison.responses, comparison.ranks)):
        for j, (worse, rank_worse) in enumerate(zip(comparison.responses, comparison.ranks)):
            if rank_better < rank_worse:
                row = {"prompt": to_canonical(comparison)["prompt"], "chosen": better, "rejected": worse}
                if comparison.user_id is not None:
                    row["user_id"] = comparison.user_id
                pairs.append(row)
    return pairs


@dataclass
class CurationReport:
    input_records: int
    dropped_shared_prefix: int
    dropped_over_user_cap: int
    split_sizes: dict[str, int]
    users_per_split: dict[str, int]
    pii_replaced: dict[str, int]
    prefix_examples: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_warnings(splits: dict[str, list], fractions: dict[str, float]) -> list[str]:
    """An empty split that was asked for, and why it usually happens (few users: splits go by user)."""
    users = len({r.user_id for split in splits.values() for r in split if r.user_id is not None})
    warnings = []
    for name, fraction in fractions.items():
        if fraction > 0 and not splits[name]:
            why = f" (records come from only {users} user(s), and splits go by user)" if users else ""
            warnings.append(f"the {name} split is empty although {name} fraction is {fraction:g}{why}")
    return warnings


def curate(records: list, prefix_chars: int = 64, max_per_user: int = 200, seed: int = 0,
           valid_fraction: float = 0.1, test_fraction: float = 0.1,
           scrub_pii: bool = True) -> tuple[dict[str, list], CurationReport]:
    if prefix_chars < 1 or max_per_user < 1:
        raise DataError(f"curate: prefix chars and max per user must be ≥ 1, got {prefix_chars} and {max_per_user}")
    check_split_fractions(valid_fraction, test_fraction)
    kept, dropped = drop_shared_prefixes(records, prefix_chars)
    kept, over_cap = cap_per_user(kept, max_per_user)
    splits = split_records(kept, seed, valid_fraction, test_fraction)
    counts: Counter = Counter()
    if scrub_pii:
        splits = {name: [scrub_prompt(r, counts) for r in split] for name, split in splits.items()}
    report = CurationReport(
        input_records=len(records), dropped_shared_prefix=len(dropped), dropped_over_user_cap=over_cap,
        split_sizes={name: len(split) for name, split in splits.items()},
        users_per_split={name: len({r.user_id for r in split if r.user_id is not None})
                         for name, split in splits.items()},
        pii_replaced=dict(counts), prefix_examples=dropped[:5],
        warnings=split_warnings(splits, {"valid": valid_fraction, "test": test_fraction}))
    for warning in report.warnings:
        logger.warning("curate: %s", warning)
    return splits, report


# a folder written by ``data curate`` before outputs carried their marker: our four files and nothing else
EARLIER_CURATION = Earlier(names=r"(train|valid|test)\.jsonl|curation_report\.json", finished="curation_report.json")


def write_curated(output_dir: str | Path, splits: dict[str, list], report: CurationReport,
                  inputs: tuple = (), overwrite: bool = False) -> Path:
    """OUTPUT/{train,valid,test}.jsonl and curation_report.json, built in OUTPUT.incomplete/ and renamed
    into place when complete (see :mod:`rlhf.outputs` for what may be replaced)."""
    with output_folder(output_dir, "data curate", inputs, overwrite, earlier=EARLIER_CURATION) as staging:
        for name, split in splits.items():
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for record in split:
                    handle.write(json.dumps(to_canonical(record), ensure_ascii=False) + "\n")
        (staging / "curation_report.json").write_text(json.dumps(report.__dict__, indent=2, ensure_ascii=False))
    return Path(output_dir)


# the readers' own: a file's kind from every row (rlhf.data.readers); importable from here, where the CLI looks
from rlhf.data.readers import detect_kind, read_any  # noqa: E402, F401
