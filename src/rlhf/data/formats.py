"""Rows from the file formats RLHF data is published in, each with its location.

``iter_rows(path)`` yields ``(where, row)`` where ``where`` is ``file:line`` (JSONL), ``file:row N``
(CSV/TSV, Parquet, datasets) or ``file:item N`` (JSON arrays), and ``row`` is a dict. The format
comes from the name (``.jsonl``, ``.jsonl.gz``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``, a
``load_from_disk`` folder) or from an explicit ``format``; ``hf:NAME[:SPLIT]`` loads a hub data set.
A ``FieldMap`` renames the user's columns to the names the record parsers read.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from rlhf.data.records import DataError

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "datasets", "hub")
JSON_COLUMNS = ("prompt", "messages", "responses", "instances")  # may hold JSON text in CSV/Parquet cells


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

    def apply(self, row: dict, where: str) -> dict:
        mapped = dict(row)
        for field in fields(self):
            source = getattr(self, field.name)
            if source and source != field.name:
                if source not in row:
                    raise DataError(f"{where}: missing field '{source}' (mapped to '{field.name}')")
                mapped[field.name] = mapped.pop(source)
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
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    if fmt != "hub" and not Path(path).exists():
        raise DataError(f"{path}: file does not exist")
    reader = {"jsonl": _jsonl, "json": _json_array, "csv": _delimited, "tsv": _delimited, "parquet": _parquet,
              "datasets": _datasets, "hub": _hub}[fmt]
    rows = reader(Path(path) if fmt != "hub" else path, "\t" if fmt == "tsv" else ",")
    for where, row in rows:
        yield where, field_map.apply(row, where) if field_map else row


def _binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _jsonl(path: Path, _sep) -> Iterator[tuple[str, dict]]:
    """Lines are decoded one by one so that a bad byte is reported on its own line."""
    with _binary(path) as handle:
        try:
            for line_no, raw in enumerate(handle, start=1):
                where = f"{path}:{line_no}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(f"{where}: not valid UTF-8 (byte {error.start}: {error.reason})") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                yield where, obj
        except (OSError, EOFError) as error:  # e.g. a truncated or fake .gz
            raise DataError(f"{path}: unreadable ({error})") from None


def read_text_file(path: Path) -> str:
    try:
        with _binary(path) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: unreadable ({error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {error.start}: {error.reason})") from None


def _json_array(path: Path, _sep) -> Iterator[tuple[str, dict]]:
    text = read_text_file(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None
    if isinstance(items, dict):  # {"data": [...]} or {"train": [...]}: the one list inside
        lists = [value for value in items.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of records (or an object holding exactly one array)")
        items = lists[0]
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}:item {index}: expected a JSON object, got {type(item).__name__}")
        yield f"{path}:item {index}", item


def _cell(key: str, value):
    """CSV and Parquet cells that hold JSON (a messages list, ranked responses) become objects."""
    if key in JSON_COLUMNS and isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist"):  # numpy arrays from Parquet list columns
        return value.tolist()
    return value


def _delimited(path: Path, separator: str) -> Iterator[tuple[str, dict]]:
    text = read_text_file(path)
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=separator)
    if not reader.fieldnames:
        raise DataError(f"{path}: no header row")
    try:
        for row in reader:
            where = f"{path}:row {reader.line_num - 1}"  # data rows count from 1 after the header
            if None in row:
                raise DataError(f"{where}: {len(row[None]) + len(reader.fieldnames)} cells, header has "
                                f"{len(reader.fieldnames)}")
            yield where, {key: _cell(key, value) for key, value in row.items() if value is not None}
    except csv.Error as error:
        raise DataError(f"{path}:row {reader.line_num}: malformed CSV ({error})") from None


def _table_rows(table, path) -> Iterator[tuple[str, dict]]:
    for index, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {index}", {key: _cell(key, value) for key, value in row.items()}


def _parquet(path: Path, _sep) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'rlhf[formats]')") from error
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: unreadable Parquet ({error})") from None
    yield from _table_rows(table, path)


def _datasets(path: Path, _sep) -> Iterator[tuple[str, dict]]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as error:
        raise DataError(f"{path}: reading a datasets folder needs 'datasets' (pip install 'rlhf[formats]')") from error
    try:
        dataset = load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"{path}: not a datasets.save_to_disk folder ({error})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{path}: a DatasetDict without a 'train' split; splits: {', '.join(dataset)}")
        dataset = dataset["train"]
    for index, row in enumerate(dataset, start=1):
        yield f"{path}:row {index}", {key: _cell(key, value) for key, value in row.items()}


def _hub(name: str, _sep) -> Iterator[tuple[str, dict]]:
    from datasets import load_dataset

    _, dataset_name, *split = name.split(":")
    try:
        dataset = load_dataset(dataset_name, split=split[0] if split else "train")
    except Exception as error:
        raise DataError(f"{name}: could not load from the hub ({error})") from None
    for index, row in enumerate(dataset, start=1):
        yield f"{name}:row {index}", {key: _cell(key, value) for key, value in row.items()}
