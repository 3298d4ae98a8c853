"""Every input format and published shape, read into the same records."""

import json

import pytest

from conftest import shared_file
from rlhf.data.curate import comparison_pairs, read_any, to_canonical
from rlhf.data.formats import FieldMap, detect_format
from rlhf.data.readers import read_comparisons, read_demonstrations, read_prompts

PAIRS = [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven.", "user_id": "u1"},
         {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Chair.", "user_id": "u2"}]


def expect_pairs(comparisons):
    assert [(c.prompt[0]["content"], c.responses, c.ranks, c.user_id) for c in comparisons] == [
        ("Name a colour.", ["Blue.", "Seven."], [1, 2], "u1"), ("Name a fruit.", ["Apple.", "Chair."], [1, 2], "u2")]


def test_json_array_and_wrapped_array(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(PAIRS))
    (tmp_path / "b.json").write_text(json.dumps({"data": PAIRS}))
    expect_pairs(read_comparisons(tmp_path / "a.json"))
    expect_pairs(read_comparisons(tmp_path / "b.json"))


def test_csv_and_tsv(tmp_path):
    header = "prompt,chosen,rejected,user_id\n"
    (tmp_path / "p.csv").write_text(header + "".join(f'"{r["prompt"]}",{r["chosen"]},{r["rejected"]},{r["user_id"]}\n'
                                                     for r in PAIRS))
    (tmp_path / "p.tsv").write_text(header.replace(",", "\t") + "".join(
        f'{r["prompt"]}\t{r["chosen"]}\t{r["rejected"]}\t{r["user_id"]}\n' for r in PAIRS))
    expect_pairs(read_comparisons(tmp_path / "p.csv"))
    expect_pairs(read_comparisons(tmp_path / "p.tsv"))


def test_csv_cells_holding_json(tmp_path):
    ranked = json.dumps([{"text": "a", "rank": 2}, {"text": "b", "rank": 1}]).replace('"', '""')
    messages = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    (tmp_path / "r.csv").write_text(f'prompt,responses\nq,"{ranked}"\n')
    (tmp_path / "m.csv").write_text('messages\n"' + messages.replace('"', '""') + '"\n')
    assert read_comparisons(tmp_path / "r.csv")[0].ranks == [2, 1]
    assert read_demonstrations(tmp_path / "m.csv")[0].response == "hello"


def test_parquet_and_datasets_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "p.parquet")
    expect_pairs(read_comparisons(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "ds"))
    assert detect_format(tmp_path / "ds") == "datasets"
    expect_pairs(read_comparisons(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS)}).save_to_disk(str(tmp_path / "dd"))
    expect_pairs(read_comparisons(tmp_path / "dd"))


def test_explicit_format_overrides_the_name(tmp_path):
    (tmp_path / "pairs.data").write_text("\n".join(json.dumps(r) for r in PAIRS))
    expect_pairs(read_comparisons(tmp_path / "pairs.data", format="jsonl"))


def test_field_mapping_for_other_column_names(tmp_path):
    rows = [{"question": "Name a colour.", "good": "Blue.", "bad": "Seven.", "author": "u1"},
            {"question": "Name a fruit.", "good": "Apple.", "bad": "Chair.", "author": "u2"}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    mapping = FieldMap(prompt="question", chosen="good", rejected="bad", user_id="author")
    expect_pairs(read_comparisons(tmp_path / "x.jsonl", field_map=mapping))


@pytest.mark.parametrize("row, kind", [
    ({"prompt": "p", "completion": "c"}, "demonstrations"),
    ({"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]}, "demonstrations"),
    ({"instruction": "p", "input": "", "output": "c"}, "demonstrations"),
    ({"instruction": "p", "instances": [{"input": "", "output": "c"}]}, "demonstrations"),
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, "comparisons"),
    ({"chosen": "\n\nHuman: p\n\nAssistant: c", "rejected": "\n\nHuman: p\n\nAssistant: r"}, "comparisons"),
    ({"prompt": "p", "responses": [{"text": "c", "ranking": 1}, {"text": "r", "ranking": 2}]}, "comparisons"),
    ({"prompt": "p"}, "prompts"),
])
def test_every_published_shape_round_trips_through_canonical_jsonl(row, kind, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(row) + "\n")
    detected, records = read_any(source)
    assert detected == kind and records[0].prompt == [{"role": "user", "content": "p"}]
    canonical = tmp_path / "out.jsonl"
    canonical.write_text(json.dumps(to_canonical(records[0])) + "\n")
    _, again = read_any(canonical)
    assert to_canonical(again[0]) == to_canonical(records[0])


def test_k_way_ranking_expands_into_pairs_only_on_request():
    from rlhf.data.records import Comparison

    comparison = Comparison([{"role": "user", "content": "q"}], ["a", "b", "c", "d"], [1, 2, 2, 3])
    pairs = comparison_pairs(comparison)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"),
                                                            ("c", "d")]
    assert to_canonical(comparison)["responses"][3] == {"text": "d", "rank": 3}


def test_shared_files_through_every_reader():
    kind, pairs = read_any(shared_file("hh-rlhf-harmless/pairs.jsonl.gz"), skip_invalid=True)
    assert (kind, len(pairs)) == ("comparisons", 1807)
    kind, demos = read_any(shared_file("self-instruct/seed_tasks.jsonl"))
    assert kind == "demonstrations" and len(demos) == 175


def test_user_id_and_free_metadata_survive_the_round_trip(tmp_path):
    row = {"prompt": "p", "response": "r", "user_id": "u7", "metadata": {"source": "labeler", "rating": 6}}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    _, [demo] = read_any(tmp_path / "d.jsonl")
    assert demo.metadata == {"source": "labeler", "rating": 6} and demo.user_id == "u7"
    assert to_canonical(demo) == row


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_swapped_field_map_reads_each_column_as_the_other(tmp_path):
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in PAIRS]
    path = write_rows(tmp_path / "swapped.jsonl", swapped)
    expect_pairs(read_comparisons(path, field_map=FieldMap(chosen="rejected", rejected="chosen")))


def test_user_ids_become_stripped_strings_or_none(tmp_path):
    ids = [7, "7", " 7 ", 7.0, None, "", "  ", float("nan"), "u1", "\u200b"]
    path = write_rows(tmp_path / "p.jsonl", [{"prompt": f"p{i}", "user_id": uid} for i, uid in enumerate(ids)])
    assert [p.user_id for p in read_prompts(path)] == ["7"] * 4 + [None] * 4 + ["u1", None]
    (tmp_path / "p.csv").write_text("prompt,user_id\na,7\nb, 7\nc,\n")
    assert [p.user_id for p in read_prompts(tmp_path / "p.csv")] == ["7", "7", None]


def test_metadata_survives_for_pairs_and_hh_dialogues(tmp_path):
    rows = [{**PAIRS[0], "metadata": {"labeler": "a"}},
            {"chosen": "\n\nHuman: p\n\nAssistant: c", "rejected": "\n\nHuman: p\n\nAssistant: r",
             "metadata": {"labeler": "b"}}]
    pair, hh = read_comparisons(write_rows(tmp_path / "c.jsonl", rows))
    assert pair.metadata == {"labeler": "a"} and hh.metadata == {"labeler": "b"}
    assert to_canonical(pair)["metadata"] == {"labeler": "a"}


def test_hh_dialogue_may_start_without_its_blank_line(tmp_path):
    rows = [{"chosen": "Human: p\n\nAssistant: c", "rejected": "Human: p\n\nAssistant: r"}]
    [comparison] = read_comparisons(write_rows(tmp_path / "hh.jsonl", rows))
    assert comparison.prompt == [{"role": "user", "content": "p"}] and comparison.responses == ["c", "r"]


def test_csv_cells_keep_their_separators_and_newlines_and_tsv_keeps_its_quotes(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,chosen,rejected\n"a\nb",c\u2028d,e\u0085f\n', newline="")
    [comparison] = read_comparisons(tmp_path / "p.csv")
    assert comparison.prompt[0]["content"] == "a\nb" and comparison.responses == ["c\u2028d", "e\u0085f"]
    (tmp_path / "d.tsv").write_text('prompt\tresponse\n"a\t"b ""c"""\n')
    [demo] = read_demonstrations(tmp_path / "d.tsv")
    assert (demo.prompt[0]["content"], demo.response) == ('"a', '"b ""c"""')


def test_json_objects_holding_their_records(tmp_path):
    for key in ("data", "train", "rows", "records", "examples", "items"):
        (tmp_path / f"{key}.json").write_text(json.dumps({"version": 2, key: PAIRS}))
        expect_pairs(read_comparisons(tmp_path / f"{key}.json"))


@pytest.mark.parametrize("name", ["pairs.jsonl.gz", "pairs.JSONL.GZ", "pairs.jsonl"])
def test_gzip_is_recognised_by_its_bytes(tmp_path, name):
    import gzip

    (tmp_path / name).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in PAIRS).encode()))
    expect_pairs(read_comparisons(tmp_path / name))


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in PAIRS).encode())
    expect_pairs(read_comparisons(tmp_path / "p.jsonl"))


def test_the_same_text_twice_at_the_same_rank_is_a_tie_and_rank_may_repeat_ranking(tmp_path):
    row = {"prompt": "q", "responses": [{"text": "a", "rank": 1, "ranking": 1}, {"text": "b", "rank": 2},
                                        {"text": "a ", "rank": 1}]}
    [comparison] = read_comparisons(write_rows(tmp_path / "k.jsonl", [row]))
    assert comparison.ranks == [1, 2, 1]


def test_an_auto_kind_comes_from_the_first_row_that_shows_one(tmp_path):
    rows = [{"prompt": "p", "chosen": "c"}, {"prompt": "q", "response": "r"}]  # the first could be either
    kind, demos = read_any(write_rows(tmp_path / "d.jsonl", rows))
    assert kind == "demonstrations" and [d.response for d in demos] == ["c", "r"]


@pytest.mark.parametrize("text, blank", [
    ("", True), (" \t\n", True), ("\u200b\u200c\u200d\u2060\ufeff", True), ("\x00\x1b\x7f\x85", True),
    ("\u00a0\u2003\u3000\u2028\u2029", True), ("\u3164\u2800", True), ("a", False), ("\u200bx", False),
    ("😀", False), ("\u0301", False), ("中", False),
])
def test_what_counts_as_empty_text(text, blank):
    from rlhf.data.readers import is_blank

    assert is_blank(text) is blank


def _open_handles(path) -> int:
    from pathlib import Path
    target = str(Path(path).resolve())
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if _link(fd) == target)


def _link(fd):
    import os
    try:
        return os.readlink(fd)
    except OSError:
        return None


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_a_reader_that_fails_mid_file_closes_it_at_once_not_at_a_later_collection(tmp_path, name):
    """A half-read file left open until the garbage collector runs is closed wherever that happens to be: once
    deep inside the next file's json.loads, where closing it hit the recursion limit (CI, fuzz test)."""
    import gc
    import gzip

    from rlhf.data.formats import iter_rows
    from rlhf.data.records import DataError
    lines = b'{"prompt": "a", "response": "b"}\n{"prompt": 7\n{"prompt": "c", "response": "d"}\n'
    path = tmp_path / name
    path.write_bytes(gzip.compress(lines) if name.endswith(".gz") else lines)
    gc.collect()
    gc.disable()
    try:
        for read in (read_demonstrations, lambda p: read_any(p, "demonstrations"), lambda p: list(iter_rows(p)),
                     lambda p: [row for _, row in iter_rows(p) if row["response"]]):
            with pytest.raises(DataError, match=r"rows\.jsonl(\.gz)?:2: "):
                read(path)
            assert _open_handles(path) == 0
    finally:
        gc.enable()
