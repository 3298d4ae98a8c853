"""Curation properties (hypothesis) and PII scrubbing on planted items."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.cli import main
from rlhf.data.curate import cap_per_user, curate, drop_shared_prefixes, normalise_text, prompt_text
from rlhf.data.records import Prompt

words = st.sampled_from(["alpha", "beta", "gamma", "delta", "tell", "me", "about", "cats"])
prompt_texts = st.lists(words, min_size=1, max_size=8).map(" ".join)
records = st.lists(st.tuples(prompt_texts, st.one_of(st.none(), st.sampled_from([f"u{i}" for i in range(6)]))),
                   max_size=60).map(lambda rows: [Prompt([{"role": "user", "content": text}], user, f"f:{i + 1}")
                                                  for i, (text, user) in enumerate(rows)])


@settings(max_examples=200, deadline=None)
@given(records, st.integers(1, 5))
def test_after_capping_no_user_exceeds_the_cap(rows, cap):
    kept, dropped = cap_per_user(rows, cap)
    assert max(Counter(r.user_id for r in kept if r.user_id).values(), default=0) <= cap
    assert len(kept) + dropped == len(rows)
    assert [r for r in rows if r.user_id is None] == [r for r in kept if r.user_id is None]


@settings(max_examples=200, deadline=None)
@given(records, st.integers(1, 30))
def test_dedupe_keeps_exactly_the_first_of_each_prefix_group(rows, prefix_chars):
    kept, dropped = drop_shared_prefixes(rows, prefix_chars)
    first_of_group = {}
    for record in rows:
        first_of_group.setdefault(normalise_text(prompt_text(record.prompt))[:prefix_chars], record)
    assert kept == list(first_of_group.values())
    assert len(kept) + len(dropped) == len(rows)


@settings(max_examples=100, deadline=None)
@given(records, st.integers(0, 1000))
def test_no_user_in_two_splits_and_nothing_lost(rows, seed):
    splits, report = curate(rows, prefix_chars=10**6, max_per_user=10**6, seed=seed, valid_fraction=0.3,
                            test_fraction=0.3, scrub_pii=False)
    users = {name: {r.user_id for r in split if r.user_id} for name, split in splits.items()}
    assert not users["train"] & users["valid"] and not users["train"] & users["test"]
    assert not users["valid"] & users["test"]
    assert sum(report.split_sizes.values()) == len(drop_shared_prefixes(rows, 10**6)[0])
    again, _ = curate(rows, prefix_chars=10**6, max_per_user=10**6, seed=seed, valid_fraction=0.3,
                      test_fraction=0.3, scrub_pii=False)
    assert again == splits  # deterministic given the seed


PLANTED = ("Write to jane.doe@example.org or call +1 415-555-0132 about card 4111 1111 1111 1111 "
           "(server 10.20.30.40).")
KEPT = "Write to {} or call {} about card {} (server {})."


def test_scrubbing_removes_every_planted_item_and_nothing_else():
    pytest.importorskip("presidio_analyzer")
    rows = [Prompt([{"role": "user", "content": PLANTED}], None, "f:1"),
            Prompt([{"role": "user", "content": "Card 4111 1111 1111 1112 fails Luhn; version 1.2.3 is fine."}],
                   None, "f:2")]
    splits, report = curate(rows, valid_fraction=0.0, test_fraction=0.0)
    scrubbed = {r.source: r.prompt[0]["content"] for r in splits["train"]}
    assert scrubbed["f:1"] == KEPT.format("<EMAIL_ADDRESS>", "<PHONE_NUMBER>", "<CREDIT_CARD>", "<IP_ADDRESS>")
    assert scrubbed["f:2"] == rows[1].prompt[0]["content"]  # not a valid card number: left alone
    assert report.pii_replaced == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}


def test_curate_cli_writes_splits_and_report(tmp_path, capsys):
    import json

    source = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question number {i} about something long enough", "user_id": f"u{i % 4}"}
            for i in range(40)]
    rows.append({"prompt": "Question number 1 about something long enough, again", "user_id": "u9"})
    source.write_text("\n".join(json.dumps(r) for r in rows))
    code = main(["data", "curate", str(source), "--output", str(tmp_path / "out"), "--prefix-chars", "40",
                 "--max-per-user", "5", "--no-scrub"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "curation_report.json").read_text())
    assert report["dropped_shared_prefix"] == 1 and report["dropped_over_user_cap"] == 40 - 20
    written = sum(len((tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "valid", "test"))
    assert written == 20 == sum(report["split_sizes"].values())
    assert "shares its prefix with" in capsys.readouterr().out


def test_stats_cli_prints_a_table(capsys):
    from conftest import shared_file

    path = shared_file("self-instruct/seed_tasks.jsonl")
    assert main(["data", "stats", str(path), "--no-pii"]) == 0
    out = capsys.readouterr().out
    assert "demonstrations" in out and "175" in out and "prompt length (words)" in out
