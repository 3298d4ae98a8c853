"""Every input format and published shape, read into the same records."""

import json

import pytest

from conftest import shared_file
from rlhf.data.curate import comparison_pairs, read_any, to_canonical
from rlhf.data.formats import FieldMap, detect_format
from rlhf.data.readers import read_comparisons, read_demonstrations

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
