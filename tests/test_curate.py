"""Curation properties (hypothesis) and PII scrubbing on planted items."""

import json
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


@pytest.mark.parametrize("text", [
    "Upgrade to version 1.2.3.4 today", "release 2.0.1.3 broke it", "build 10.0.19041.1 fails",
    "firmware: 4.19.0.2", "on 25.12.2024 14:00", "(02-01-1985)", "Date: 04-07-2019"])
def test_version_numbers_and_dates_are_not_pii(text):
    pytest.importorskip("presidio_analyzer")
    from rlhf.data.pii import scrub

    assert scrub(text) == text


@pytest.mark.parametrize("text, expected", [
    ("mail jörg@müller.de now", "mail <EMAIL_ADDRESS> now"),
    ("write 用户@例子.广告 please", "write <EMAIL_ADDRESS> please"),
    ("ask josé.garcía@ejemplo.es", "ask <EMAIL_ADDRESS>"),
    ("server 10.20.30.40 is down", "server <IP_ADDRESS> is down"),
    ("node 10.0.0.5 and update 192.168.1.10", "node <IP_ADDRESS> and update <IP_ADDRESS>"),
    ("call +1 415-555-0132 on 2024-01-02", "call <PHONE_NUMBER> on 2024-01-02"),
])
def test_unicode_addresses_and_real_pii_are_scrubbed(text, expected):
    pytest.importorskip("presidio_analyzer")
    from rlhf.data.pii import scrub

    assert scrub(text) == expected


@pytest.mark.parametrize("valid, test, message", [
    ("0.5", "0.5", "leaves no training data"), ("0.9", "0.3", "leaves no training data"),
    ("1.0", "0", "valid_fraction must be in [0, 1)"), ("-0.1", "0.1", "valid_fraction must be in [0, 1)")])
def test_curate_refuses_fractions_that_leave_no_training_data(tmp_path, capsys, valid, test, message):
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(10)))
    code = main(["data", "curate", str(source), "--output", str(tmp_path / "out"), "--no-scrub",
                 "--valid-fraction", valid, "--test-fraction", test])
    error = capsys.readouterr().err
    assert code == 2 and message in error and not (tmp_path / "out").exists()


def test_stage_configs_refuse_fractions_that_leave_no_training_data():
    from rlhf.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="leaves no training data"):
        load_config("sft", [], ["valid_fraction=0.6", "test_fraction=0.4"])
    with pytest.raises(ConfigError, match="leaves no training data"):
        load_config("pipeline", [], ["valid_fraction=0.5", "test_fraction=0.5"])


def test_an_empty_requested_split_is_reported(tmp_path, caplog):
    rows = [Prompt([{"role": "user", "content": f"question {i}"}], "only-user", f"f:{i}") for i in range(50)]
    splits, report = curate(rows, valid_fraction=0.1, test_fraction=0.1, scrub_pii=False)
    assert sorted(len(split) for split in splits.values()) == [0, 0, 50]
    assert len(report.warnings) == 2 and all("only 1 user(s)" in w for w in report.warnings)
    assert "split is empty" in caplog.text


def test_user_ids_are_normalised_before_capping(tmp_path, capsys):
    """7, "7" and "7 " are one user; "", null and NaN are no user (never capped)."""
    source = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"distinct question number {i}", "user_id": uid})
             for i, uid in enumerate([7, "7", "7 ", 7.0, "", None, "  "] * 3)]
    lines += [f'{{"prompt": "a question with no user number {i}", "user_id": NaN}}' for i in range(3)]
    source.write_text("\n".join(lines) + "\n")
    code = main(["data", "curate", str(source), "--output", str(tmp_path / "out"), "--no-scrub",
                 "--max-per-user", "2", "--valid-fraction", "0", "--test-fraction", "0"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "curation_report.json").read_text())
    assert report["dropped_over_user_cap"] == 12 - 2  # user "7": 12 records, cap 2
    assert report["split_sizes"]["train"] == 2 + 9 + 3 and report["users_per_split"]["train"] == 1
