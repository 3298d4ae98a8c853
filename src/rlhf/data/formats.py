"""Rows from the file formats RLHF data is published in, each with its location.

``iter_rows(path)`` yields ``(where, row)``: ``where`` is ``file:line`` (JSONL; CSV/TSV: the line on which
the row starts, so a quoted newline does not shift it), ``file:item N`` (JSON arrays) or ``file:row N``
(Parquet, datasets, hub), and ``row`` is a dict. ``rows_and_errors(path)`` yields the same, except that a
row which cannot be read (malformed JSON, bad UTF-8, not an object, a ragged CSV row, a lone surrogate) comes
as its :class:`DataError`, so that a reader may skip it; a problem with the whole file (missing,
unreadable, truncated, an unclosed quote, a duplicated column) is raised.

The format comes from the name (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``, each optionally
``.gz``; a ``load_from_disk`` folder) or from an explicit ``format``; ``hf:NAME[:SPLIT]`` loads a hub data
set. Gzip is recognised by its magic bytes, whatever the name. CSV follows RFC 4180 (a quoted cell may hold
commas, quotes and newlines); TSV has no quoting at all (a cell is everything between two tabs, quotes
included), the text/tab-separated-values convention. A ``FieldMap`` renames the user's columns to the names
the record parsers read.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import decimal
import gzip
import io
import json
import re
import stat
import sys
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path

from rlhf.data.records import DataError, json_type

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "datasets", "hub")
# CSV/Parquet cells that may hold JSON text, and the JSON type that counts (a prompt that merely looks like
# JSON stays text unless it is a list of message objects)
JSON_COLUMNS = {"prompt": list, "messages": list, "responses": list, "instances": list, "metadata": dict}
# the fields of a record: a top-level JSON object holding any of them is one record, not a container of records
RECORD_FIELDS = ("prompt", "response", "completion", "chosen", "rejected", "responses", "messages", "instruction",
                 "output", "instances")
# the keys under which a JSON file may hold its array of records: {"data": [...]}
JSON_CONTAINERS = ("data", "train", "rows", "records", "examples", "items")
CSV_FIELD_LIMIT = 2**31 - 1  # characters in one cell: the csv module's 131,072 cuts real dialogues short
GZIP_MAGIC = b"\x1f\x8b"
NOT_OUR_FORMATS = (  # what a file is, from its first bytes, when it cannot be any of the text formats
    (re.compile(rb"PK\x03\x04"), "a zip archive; unzip it first"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed; decompress it (or compress it with gzip)"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed; decompress it (or compress it with gzip)"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed; decompress it (or compress it with gzip)"),
    (re.compile(rb"PAR1"), "a Parquet file; name it .parquet or pass --format parquet"),
    (re.compile(rb"\xff\xfe|\xfe\xff"), "UTF-16 text (it starts with a byte-order mark); save it as UTF-8"),
)
SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: from a "\ud800" JSON escape, or an undecodable byte


@dataclass(frozen=True)
class FieldMap:
    """Source column → canonical field (``--prompt-field question`` reads ``question`` as ``prompt``)."""

    prompt: str | None = None
    response: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    responses: str | None = None
    messages: str | None = None
    user_id: str | None = None

    def __post_init__(self):
        sources = [(getattr(self, f.name), f.name) for f in fields(self) if getattr(self, f.name)]
        for i, (source, name) in enumerate(sources):
            for other_source, other in sources[i + 1:]:
                if source == other_source:
                    raise DataError(f"fields '{name}' and '{other}' are both mapped from column '{source}'")

    def renames(self) -> dict[str, str]:
        return {getattr(self, f.name): f.name for f in fields(self) if getattr(self, f.name) not in (None, f.name)}

    def apply(self, row: dict, where: str) -> dict:
        """All renames at once, so that ``chosen=rejected, rejected=chosen`` swaps the two columns."""
        renames = self.renames()
        for source, name in renames.items():
            if source not in row:
                raise DataError(f"{where}: missing field '{source}' (mapped to '{name}')")
            if name in row and name not in renames:  # the row's own field of that name would vanish unseen
                raise DataError(f"{where}: field '{name}' is present and '{source}' is mapped to it; "
                                f"map '{name}' elsewhere or drop one of them")
        mapped = {key: value for key, value in row.items() if key not in renames}
        mapped.update({name: row[source] for source, name in renames.items()})
        return mapped


def detect_format(path: str | Path) -> str:
    text = str(path)
    if text.startswith("hf:"):
        return "hub"
    path = Path(path)
    if path.is_dir():
        return "datasets"
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                        (".tsv", "tsv"), (".parquet", "parquet"), (".txt", "jsonl")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the name; pass one of {', '.join(FORMATS)}")


def iter_rows(path: str | Path, format: str = "auto", field_map: FieldMap | None = None) -> Iterator[tuple[str, dict]]:
    """Every row as ``(where, dict)``; the first unreadable row raises its :class:`DataError`."""
    with closing(rows_and_errors(path, format, field_map)) as rows:  # closed now, not by a later collection
        for where, row in rows:
            if isinstance(row, DataError):
                raise row
            yield where, row


def rows_and_errors(path: str | Path, format: str = "auto",
                    field_map: FieldMap | None = None) -> Iterator[tuple[str, dict | DataError]]:
    """Every row as ``(where, dict)``, or ``(where, DataError)`` for a row that cannot be read."""
    try:  # a folder on the way that we may not enter fails here
        fmt = detect_format(path) if format == "auto" else format
        missing = fmt != "hub" and not Path(path).exists()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from None
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    if missing:
        raise DataError(f"{path}: file does not exist")
    if fmt != "hub":
        refuse_special_file(path)
    reader = {"jsonl": _jsonl, "json": _json_array, "csv": _delimited, "tsv": _delimited, "parquet": _parquet,
              "datasets": _datasets, "hub": _hub}[fmt]
    with closing(reader(Path(path) if fmt != "hub" else path, "\t" if fmt == "tsv" else ",")) as rows:
        for where, row in rows:
            if isinstance(row, dict):
                row = _checked(row, where, field_map)
            yield where, row


def _checked(row: dict, where: str, field_map: FieldMap | None) -> dict | DataError:
    name = unencodable_field(row)
    if name is not None:
        return DataError(f"{where}: field '{name}' holds a lone surrogate, which is not text (it cannot be "
                         "written as UTF-8)")
    try:
        return field_map.apply(row, where) if field_map else row
    except DataError as error:
        return error


def unencodable_field(row: dict) -> str | None:
    """The first field (``responses[1].text``) holding a lone surrogate, in a key or a value; None if none."""
    queue = deque([("", row)])
    while queue:
        name, value = queue.popleft()
        if isinstance(value, str):
            if SURROGATE.search(value):
                return name
        elif isinstance(value, dict):
            for key, item in value.items():
                field = f"{name}.{key}" if name else str(key)
                if isinstance(key, str) and SURROGATE.search(key):
                    return field
                queue.append((field, item))
        elif isinstance(value, list):
            queue.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
    return None


def refuse_special_file(path: str | Path) -> None:
    """A pipe, socket or device would block or never end: only regular files (and folders) are read."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return  # missing or unreachable: the caller's own message says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{path}: not a regular file (a pipe, socket or device); give a file")


def open_binary(path: Path):
    """The file's bytes, gunzipped when they start with gzip's magic number (in any case of name)."""
    refuse_special_file(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        gzipped = head.startswith(GZIP_MAGIC)
        handle = gzip.open(path, "rb") if gzipped else open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from None
    if not gzipped and path.suffix.lower() == ".gz":
        handle.close()
        raise DataError(f"{path}: unreadable: named .gz but not gzip-compressed")
    for magic, what in NOT_OUR_FORMATS:
        if not gzipped and magic.match(head):
            handle.close()
            raise DataError(f"{path}: {what}")
    return handle


def read_text_file(path: Path, errors: str = "strict") -> str:
    """The whole file as text (UTF-8, a byte-order mark dropped); ``errors='surrogateescape'`` keeps a bad byte
    as a lone surrogate for the caller to report on its own row."""
    try:
        with open_binary(path) as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: unreadable ({error})") from None
    try:
        return data.decode("utf-8-sig", errors)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {error.start}: {error.reason})") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """An object with a key twice is an error, as a CSV header with a column twice: which value was meant?"""
    row = dict(pairs)
    if len(row) != len(pairs):
        keys = [key for key, _ in pairs]
        raise _DuplicateKey(next(key for key in keys if keys.count(key) > 1))
    return row


def load_json(text: str, where: str, whole_file: bool = False):
    """``json.loads`` whose every failure is a DataError at ``where`` (``where:LINE`` for a whole file)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        at = f"{where}:{error.lineno}" if whole_file else where
        raise DataError(f"{at}: malformed JSON ({error.msg} at column {error.colno})") from None
    except _DuplicateKey as error:
        raise DataError(f"{where}: field '{error}' appears twice in one object") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to read") from None
    except ValueError:  # the only other one: an integer longer than Python converts
        raise DataError(f"{where}: a JSON number longer than {sys.get_int_max_str_digits()} digits") from None


def _jsonl(path: Path, _sep) -> Iterator[tuple[str, dict | DataError]]:
    """Lines are decoded one by one so that a bad byte is reported on its own line."""
    line_no = 0
    with open_binary(path) as handle:
        try:
            for line_no, raw in enumerate(handle, start=1):
                row = _jsonl_row(raw.removeprefix(codecs.BOM_UTF8) if line_no == 1 else raw, f"{path}:{line_no}")
                if row is not None:  # None: a blank line
                    yield f"{path}:{line_no}", row
        except (OSError, EOFError, zlib.error) as error:  # e.g. a truncated or corrupt .gz
            raise DataError(f"{path}: unreadable after line {line_no} ({error})") from None


def _jsonl_row(raw: bytes, where: str) -> dict | DataError | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return DataError(f"{where}: not valid UTF-8 (byte {error.start}: {error.reason})")
    if not line.strip():
        return None
    try:
        row = load_json(line, where)
    except DataError as error:
        return error
    return row if isinstance(row, dict) else DataError(f"{where}: expected a JSON object, got {json_type(row)}")


def _json_array(path: Path, _sep) -> Iterator[tuple[str, dict | DataError]]:
    text = read_text_file(path)
    if not text.strip():  # nothing: as an empty JSONL file, no records
        return
    if _one_object_per_line(text):  # JSON Lines named .json, as datasets' to_json writes them
        yield from _jsonl(path, _sep)
        return
    items = records_array(load_json(text, str(path), whole_file=True), path)
    for index, item in enumerate(items):
        where = f"{path}:item {index}"
        yield where, item if isinstance(item, dict) else DataError(
            f"{where}: expected a JSON object, got {json_type(item)}")


def _one_object_per_line(text: str) -> bool:
    """The first line is a whole JSON object and another line follows it."""
    first, _, rest = text.lstrip().partition("\n")
    if not first.startswith("{") or not rest.strip():
        return False
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def records_array(value, path) -> list:
    """The records of a JSON file: the array itself, or an object's only array when its key is one of
    JSON_CONTAINERS (``{"version": 2, "data": [...]}``). An object with a record's fields is a single record, not
    a file of them: an error, as is any other object (which of several arrays would be meant?)."""
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON array of records, got {json_type(value)}")
    record_like = [key for key in value if key in RECORD_FIELDS]
    if record_like and all(isinstance(item, dict) for item in value.values()):
        raise DataError(f"{path}: expected a JSON array of records, got an object of columns "
                        f"({', '.join(record_like)}), as pandas writes with orient='columns'; write "
                        "orient='records' or JSONL")
    if record_like:
        raise DataError(f"{path}: expected a JSON array of records, got one object with the fields of a record "
                        f"({', '.join(record_like)}); wrap it in [ ] or write JSONL")
    arrays = [key for key, item in value.items() if isinstance(item, list)]
    if len(arrays) == 1 and arrays[0] in JSON_CONTAINERS:
        return value[arrays[0]]
    keys = ", ".join(list(value)[:8]) + (", ..." if len(value) > 8 else "")
    found = f"several arrays ({', '.join(arrays)})" if len(arrays) > 1 else f"keys {keys or '(none)'}"
    raise DataError(f"{path}: expected a JSON array of records, or an object holding one under one of "
                    f"{', '.join(JSON_CONTAINERS)}; got an object with {found}")


def _cell(key: str, value):
    """CSV and Parquet cells that hold JSON (a messages list, ranked responses) become objects."""
    if key in JSON_COLUMNS and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        wanted = JSON_COLUMNS[key]
        if isinstance(parsed, wanted) and (wanted is dict or all(isinstance(item, dict) for item in parsed)):
            return parsed
        return value
    if hasattr(value, "tolist"):  # numpy arrays from Parquet list columns
        return value.tolist()
    return value


def _delimited(path: Path, separator: str) -> Iterator[tuple[str, dict | DataError]]:
    rows = [row for row in _csv_rows(read_text_file(path, errors="surrogateescape"), path, separator) if row[2]]
    if not rows:
        raise DataError(f"{path}: no header row")
    if isinstance(rows[0][2], DataError):
        raise rows[0][2]
    header = _header(rows[0], path, separator)
    for start, end, cells in rows[1:]:
        where = f"{path}:{start}"
        if isinstance(cells, DataError):  # a stray quote spoils its own row only
            yield where, cells
            continue
        if len(cells) != len(header):
            spans = f" (a quoted cell runs from line {start} to {end}: is a quote unbalanced?)" if end > start else ""
            yield where, DataError(f"{where}: {len(cells)} cells, header has {len(header)}{spans}")
            continue
        bad = next((name for name, cell in zip(header, cells) if SURROGATE.search(cell)), None)
        if bad is not None:
            yield where, DataError(f"{where}: field '{bad}' is not valid UTF-8")
            continue
        yield where, {name: _cell(name, cell) for name, cell in zip(header, cells) if name}


def _csv_rows(text: str, path: Path, separator: str) -> list[tuple[int, int, list[str] | DataError]]:
    """``(first line, last line, cells)`` of every row (a blank line has no cells); TSV without quoting, CSV
    strict about quotes. A row the csv module cannot split (a stray quote) is its DataError, and reading goes
    on at the next line; a quote never closed, or a cell over the size limit, ends the file."""
    name, dialect = ("TSV", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}) if separator == "\t" \
        else ("CSV", {"strict": True})
    previous_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), **dialect)
    rows, start = [], 1
    try:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                problem = str(error)
                if "unexpected end of data" in problem or "field larger than field limit" in problem:
                    problem = "a quote opened in this row is never closed" if "unexpected" in problem \
                        else f"a cell longer than {CSV_FIELD_LIMIT} characters"
                    raise DataError(f"{path}:{start}: malformed {name} ({problem})") from None
                cells = DataError(f"{path}:{start}: malformed {name} ({problem})")
            rows.append((start, reader.line_num, cells))
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(previous_limit)
    return rows


def _header(row: tuple[int, int, list[str]], path: Path, separator: str) -> list[str]:
    """Column names, stripped; a column without a name is ignored, a duplicated one is an error (which would win?)."""
    where, names = f"{path}:{row[0]}", [cell.strip() for cell in row[2]]
    other = next((mark for mark in ",;\t|" if len(names) == 1 and mark != separator and mark in names[0]), None)
    if other:
        raise DataError(f"{where}: the header is one column, {names[0][:60]!r}: are the columns separated by "
                        f"{other!r}? (.csv needs ',', .tsv a tab)")
    for name in names:
        if SURROGATE.search(name):
            raise DataError(f"{where}: the header is not valid UTF-8")
        if name and names.count(name) > 1:
            raise DataError(f"{where}: column '{name}' appears {names.count(name)} times in the header")
    return names


def plain(value):
    """A Parquet or ``datasets`` cell as the JSON value it stands for: a timestamp or date becomes its ISO
    text, a decimal a number, UTF-8 bytes text (other bytes stay bytes: a field that needs text or JSON
    then says so)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value)
    return value


def _table_row(row: dict) -> dict:
    return {key: plain(_cell(key, value)) for key, value in row.items()}


def _table_rows(table, path) -> Iterator[tuple[str, dict | DataError]]:
    for index, row in enumerate(table.to_pylist(), start=1):
        where = f"{path}:row {index}"
        yield where, _table_row(row)


def _parquet(path: Path, _sep) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from error
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: unreadable Parquet ({error})") from None
    yield from _table_rows(table, path)


def _datasets(path: Path, _sep) -> Iterator[tuple[str, dict]]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as error:
        raise DataError(f"{path}: reading a datasets folder needs 'datasets' (pip install datasets)") from error
    try:
        dataset = load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"{path}: not a datasets.save_to_disk folder ({error})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{path}: a DatasetDict without a 'train' split; splits: {', '.join(dataset)}")
        dataset = dataset["train"]
    for index, row in enumerate(dataset, start=1):
        where = f"{path}:row {index}"
        yield where, _table_row(row)


def _hub(name: str, _sep) -> Iterator[tuple[str, dict]]:
    if not str(name).startswith("hf:") or not str(name)[3:].strip(":"):
        raise DataError(f"{name}: a hub data set is named hf:NAME[:SPLIT]")
    try:
        from datasets import load_dataset
        from datasets.utils import logging as datasets_logging
    except ImportError as error:
        raise DataError(f"{name}: reading a hub data set needs 'datasets' (pip install datasets)") from error
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # each retry would print a warning: a failed load is our one line
    datasets_logging.set_verbosity_error()

    _, dataset_name, *split = str(name).split(":", 2)
    try:
        dataset = load_dataset(dataset_name, split=split[0] if split else "train")
    except Exception as error:
        raise DataError(f"{name}: could not load from the hub ({error})") from None
    for index, row in enumerate(dataset, start=1):
        where = f"{name}:row {index}"
        yield where, _table_row(row)
