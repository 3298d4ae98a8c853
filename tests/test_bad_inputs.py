"""The corpus of broken inputs in tests/data/bad: each gets a one-line error naming the file, the line
(or row/item) and the field, a non-zero exit, and no output file."""

import re
from pathlib import Path

import pytest

from rlhf.cli import main

BAD = Path(__file__).parent / "data" / "bad"

CASES = {  # file: (kind, message after "FILE")
    "malformed_json.jsonl": ("comparisons", r":2: malformed JSON"),
    "missing_rejected.jsonl": ("comparisons", r":2: missing field 'rejected'"),
    "empty_chosen.jsonl": ("comparisons", r":2: field 'chosen' is empty"),
    "empty_prompt.jsonl": ("comparisons", r":2: field 'prompt' is empty"),
    "prompt_not_string.jsonl": ("comparisons", r":2: field 'prompt' must be a string, got int"),
    "one_response.jsonl": ("comparisons", r":2: field 'responses' needs at least 2 responses"),
    "rank_string.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got '1'"),
    "rank_float.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be an integer, got 1\.5"),
    "rank_zero.jsonl": ("comparisons", r":2: field 'responses\[0\]\.rank' must be ≥ 1"),
    "all_ties.jsonl": ("comparisons", r":2: field 'responses' has all ranks equal"),
    "response_not_object.jsonl": ("comparisons", r":2: field 'responses\[0\]' must be an object"),
    "response_missing_text.jsonl": ("comparisons", r":2: responses\[0\]: missing field 'text'"),
    "array_line.jsonl": ("comparisons", r":2: expected a JSON object, got list"),
    "unknown_shape.jsonl": ("comparisons", r":2: not a comparison"),
    "hh_no_assistant.jsonl": ("comparisons", r":2: field 'chosen' has no '\\n\\nAssistant:' turn"),
    "hh_mismatch.jsonl": ("comparisons", r":2: fields 'chosen' and 'rejected' do not share the dialogue"),
    "hh_empty_reply.jsonl": ("comparisons", r":2: field 'chosen' has an empty last Assistant reply"),
    "bad_message.jsonl": ("comparisons", r":2: field 'prompt\[0\]' must be an object with 'role' and 'content'"),
    "non_utf8.jsonl": ("comparisons", r":2: not valid UTF-8"),
    "fake_gzip.jsonl.gz": ("comparisons", r": unreadable"),
    "demo_missing_response.jsonl": ("demonstrations", r":2: missing field 'response'"),
    "demo_messages_no_assistant.jsonl": ("demonstrations", r":2: field 'messages' must end with an assistant turn"),
    "alpaca_missing_output.jsonl": ("demonstrations", r":2: missing field 'output'"),
    "selfinstruct_empty_instances.jsonl": ("demonstrations", r":2: field 'instances' is empty"),
    "empty_response.jsonl": ("demonstrations", r":2: field 'response' is empty"),
    "empty_file.jsonl": ("demonstrations", r": no usable records"),
    "missing_columns.csv": ("comparisons", r":row 1: missing field 'chosen'"),
    "ragged.csv": ("comparisons", r":row 2: 4 cells, header has 3"),
    "non_utf8.csv": ("demonstrations", r":3: not valid UTF-8"),
    "empty_cell.tsv": ("demonstrations", r":row 2: field 'response' is empty"),
    "no_header.csv": ("demonstrations", r": no header row"),
    "not_array.json": ("comparisons", r": expected a JSON array of records"),
    "item_not_object.json": ("comparisons", r":item 1: expected a JSON object, got str"),
    "malformed.json": ("comparisons", r":2: malformed JSON"),
    "unknown_extension.xml": ("comparisons", r": cannot tell the format from the name"),
}


def test_the_corpus_is_complete():
    assert len(CASES) >= 30
    assert sorted(CASES) == sorted(p.name for p in BAD.iterdir())


def run_convert(capsys, tmp_path, path, *options):
    output = tmp_path / "out.jsonl"
    code = main(["data", "convert", str(path), "--output", str(output), *options])
    return code, capsys.readouterr().err.strip(), output


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_broken_input_gets_a_located_one_line_error(name, capsys, tmp_path):
    kind, message = CASES[name]
    code, error, output = run_convert(capsys, tmp_path, BAD / name, "--kind", kind)
    assert code == 2
    assert len(error.splitlines()) == 1, error
    assert error.startswith(f"rlhf: error: {BAD / name}")
    assert re.search(message, error), error
    assert not output.exists() and not output.with_name(output.name + ".tmp").exists()


def test_missing_file_and_unmapped_column(capsys, tmp_path):
    code, error, _ = run_convert(capsys, tmp_path, tmp_path / "nope.jsonl")
    assert code == 2 and error.endswith("nope.jsonl: file does not exist")
    code, error, _ = run_convert(capsys, tmp_path, BAD / "missing_columns.csv", "--kind", "demonstrations",
                                 "--prompt-field", "question")
    assert code == 2 and "row 1: missing field 'question' (mapped to 'prompt')" in error


def test_parquet_without_the_needed_columns(capsys, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "chosen": ["x", "y"]}), path)
    code, error, output = run_convert(capsys, tmp_path, path, "--kind", "comparisons")
    assert code == 2 and f"{path}:row 1: missing field 'rejected'" in error
    assert not output.exists()
