"""Hostile input, generated: random bytes, random text and random JSON values (nested objects and arrays,
lone surrogates, integers of thousands of digits, NaN and infinities, deep nesting), written as every format,
through every reader. Each read gives records that keep the readers' promises, or a one-line DataError;
nothing else."""

import csv
import gzip
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.data.curate import to_canonical
from rlhf.data.readers import ROLES, is_blank, read_any, read_comparisons, read_demonstrations, read_prompts
from rlhf.data.records import Comparison, DataError, Demonstration, Prompt

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
NAMES = ("rows.jsonl", "rows.jsonl.gz", "rows.json", "rows.csv", "rows.tsv")
READERS = (read_demonstrations, read_comparisons, read_prompts, lambda path: read_any(path)[1])


class Raw:
    """JSON text written as it is: what json.dumps cannot write (a 5,000-digit integer, deep nesting)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:20]!r}...)"


def to_json(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ", ".join(map(to_json, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {to_json(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)  # NaN and Infinity as Python writes them; surrogates as \ud800 escapes


FIELDS = ["prompt", "response", "completion", "chosen", "rejected", "responses", "messages", "instruction", "input",
          "output", "instances", "text", "rank", "ranking", "role", "content", "user_id", "category", "metadata"]
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
strings = st.one_of(
    st.text(max_size=12), surrogates, st.sampled_from(["Blue.", "Seven.", "Name a colour.", "a", "b"]),
    st.sampled_from(["\n\nHuman: hi\n\nAssistant: yo", "Human: a\n\nAssistant: b\n\nHuman: c", "\n\nHuman: a",
                     "x\n\nHuman: a\n\nAssistant: b", "user", "assistant", "system", "human", "\u200b\u2060",
                     " ", "", "7", " 7 ", "[{\"role\": \"user\", \"content\": \"hi\"}]", "\"", "a,b\tc\nd"]))
numbers = st.one_of(st.integers(), st.integers(-2, 4), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([Raw("9" * 5000), Raw("-" + "1" * 4400), Raw("NaN"), Raw("-Infinity")]))
deep = st.integers(500, 4000).map(lambda depth: Raw("[" * depth + "]" * depth))
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
values = st.recursive(scalars | deep, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), children,
                                                    max_size=5)), max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(list(ROLES)) | strings, "content": strings | values})
conversation = st.one_of(strings, st.lists(message, max_size=4))
ranked = st.fixed_dictionaries({"text": strings}, optional={"rank": numbers | values, "ranking": numbers})
optional = {"user_id": scalars | values, "metadata": values, "category": scalars}
records = st.one_of(  # shaped like the real thing, with anything in the fields
    st.fixed_dictionaries({"prompt": conversation, "chosen": strings, "rejected": strings}, optional=optional),
    st.fixed_dictionaries({"chosen": strings, "rejected": strings}, optional=optional),
    st.fixed_dictionaries({"prompt": conversation, "responses": st.lists(ranked, max_size=4) | values},
                          optional=optional),
    st.fixed_dictionaries({"prompt": conversation, "response": strings | values}, optional=optional),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4) | values}, optional=optional),
    st.fixed_dictionaries({"instruction": strings, "input": scalars, "output": strings | values}),
    st.fixed_dictionaries({"instruction": strings, "instances": st.lists(
        st.fixed_dictionaries({"input": scalars, "output": strings | values}), max_size=3) | values}),
    st.fixed_dictionaries({"prompt": conversation}, optional=optional),
    values,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_every_reader(folder: Path) -> None:
    for name in NAMES:
        for reader in READERS:
            try:
                result = reader(folder / name)
            except DataError as error:
                assert "\n" not in str(error) and str(error).isprintable()
                continue
            assert isinstance(result, list) and result
            for record in result:
                check_record(record)


def check_record(record) -> None:
    """What every reader promises about what it returns."""
    assert isinstance(record, (Demonstration, Comparison, Prompt))
    assert record.user_id is None or (isinstance(record.user_id, str) and record.user_id == record.user_id.strip()
                                      and record.user_id)
    assert record.prompt and record.prompt[-1]["role"] == "user"
    for turn in record.prompt:
        assert turn["role"] in ROLES and isinstance(turn["content"], str) and not is_blank(turn["content"])
    texts = [record.response] if isinstance(record, Demonstration) else getattr(record, "responses", [])
    assert all(isinstance(text, str) and not is_blank(text) for text in texts)
    if isinstance(record, Comparison):
        assert len(record.responses) >= 2 and len(set(record.ranks)) >= 2
        assert all(isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank < 2**31 for rank in record.ranks)
    assert isinstance(record.metadata, dict)
    json.dumps(to_canonical(record), ensure_ascii=False).encode("utf-8")  # writable: no lone surrogate


def write_table(rows: list, separator: str) -> str:
    header = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row)) or ["value"]
    lines = [[row.get(key, "") if isinstance(row, dict) else to_json(row) for key in header] for row in rows]
    cells = [[cell if isinstance(cell, str) else to_json(cell) for cell in line] for line in lines]
    if separator == "\t":
        return "".join("\t".join(line) + "\n" for line in [header, *cells])
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *cells])
    return text.getvalue()


def write_every_format(folder: Path, rows: list, wrapped: bool) -> None:
    jsonl = "".join(to_json(row) + "\n" for row in rows).encode("utf-8", "surrogatepass")
    (folder / "rows.jsonl").write_bytes(jsonl)
    (folder / "rows.jsonl.gz").write_bytes(gzip.compress(jsonl, mtime=0))
    (folder / "rows.json").write_text(to_json({"data": rows} if wrapped else rows), encoding="utf-8")
    for name, separator in (("rows.csv", ","), ("rows.tsv", "\t")):
        (folder / name).write_bytes(write_table(rows, separator).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.lists(records, max_size=4), st.booleans())
def test_random_json_values_in_every_format_through_every_reader(folder, rows, wrapped):
    write_every_format(folder, rows, wrapped)
    check_every_reader(folder)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=120).map(str.encode),
                 surrogates.map(lambda text: text.encode("utf-8", "surrogatepass"))),
       st.sampled_from([b"", b"\xef\xbb\xbf", b"\x1f\x8b", b"prompt,chosen,rejected\n", b"prompt\tresponse\n",
                        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', b"[", b'{"data": [']),
       st.booleans())
def test_random_bytes_in_every_format_through_every_reader(folder, data, prefix, gzipped):
    content = prefix + data
    for name in NAMES:
        (folder / name).write_bytes(gzip.compress(content, mtime=0) if gzipped or name.endswith(".gz") else content)
    check_every_reader(folder)


@FUZZ
@given(st.lists(st.lists(strings | st.text(alphabet=',"\t\n\r\u2028\u0085 ab'), min_size=1, max_size=4),
                min_size=1, max_size=5))
def test_random_tables_through_every_reader(folder, table):
    for name, separator in (("rows.csv", ","), ("rows.tsv", "\t")):
        header = ["prompt", "chosen", "rejected", "response"][: len(table[0])]
        text = write_table([dict(zip(header, row)) for row in table], separator)
        (folder / name).write_bytes(text.encode("utf-8", "surrogatepass"))
    for name in ("rows.csv", "rows.tsv"):
        for reader in READERS:
            try:
                records = reader(folder / name)
            except DataError:
                continue
            for record in records:
                check_record(record)

