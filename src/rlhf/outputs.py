"""Where commands write. No command deletes or overwrites what it did not create.

Every writing command goes through one of two context managers:

- :func:`output_file` — one file (``data convert``). An existing file is replaced only with
  ``overwrite=True`` *and* only when it looks like one of ours (JSONL of objects); a folder, an input
  of the command or anything else is refused.
- :func:`output_folder` — a folder (``data curate``, ``label export``, every training stage). The
  folder is built under ``NAME.incomplete/`` and renamed into place when complete. Each folder we
  write carries ``.rlhf-output.json`` listing its command and the names it wrote; an existing folder
  is replaced only when it is recognised as an earlier output of the same command and holds nothing
  else. A folder that holds an input, the current folder or one of its parents is refused.

Both remove their temporary files on every failure (an exception or Ctrl-C); after ``kill -9`` the
next run removes the staging folder it recognises as its own. Refusals are :class:`OutputError`
(a :class:`DataError`: one line, exit 2, nothing written).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rlhf.data.records import DataError

MARKER = ".rlhf-output.json"


class OutputError(DataError):
    """An output path that would destroy or shadow something the command did not create."""


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _local_inputs(inputs: Iterable[str | Path | None]) -> list[Path]:
    return [_resolved(p) for p in inputs if p and not str(p).startswith("hf:")]


def _check_not_input(path: Path, inputs: list[Path], what: str) -> None:
    for source in inputs:
        if _is_within(source, path) or (path.exists() and source.exists() and os.path.samefile(path, source)):
            raise OutputError(f"{path}: the output {what} would replace the input {source}; choose another path")


def looks_like_jsonl(path: Path) -> bool:
    """An empty file or one whose first non-blank line is a JSON object: what our JSONL writers write."""
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if raw.strip():
                    return isinstance(json.loads(raw), dict)
    except (OSError, ValueError):
        return False
    return True


def check_output_file(path: str | Path, inputs: Iterable = (), overwrite: bool = False,
                      recognise: Callable[[Path], bool] = looks_like_jsonl) -> Path:
    """Refuse an output file that is a folder, an input, or an existing file (without ``overwrite``,
    or that ``recognise`` does not take for one of ours)."""
    target = _resolved(path)
    if str(path).endswith(("/", os.sep)) or target.is_dir():
        raise OutputError(f"{path}: is a folder; the output must be a file path")
    _check_not_input(target, _local_inputs(inputs), "file")
    if target.exists() or target.is_symlink():
        if not target.is_file() or target.is_symlink():
            raise OutputError(f"{path}: exists and is not a regular file; refusing to replace it")
        if not overwrite:
            raise OutputError(f"{path}: exists; pass --overwrite to replace it")
        if not recognise(target):
            raise OutputError(f"{path}: exists and does not look like a file rlhf wrote; refusing to overwrite it")
    return target


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (deepest last) so that a failure can remove them."""
    created = []
    for parent in reversed([folder, *folder.parents]):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    return created


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if still empty
        except OSError:
            break


@contextmanager
def output_file(path: str | Path, inputs: Iterable = (), overwrite: bool = False,
                recognise: Callable[[Path], bool] = looks_like_jsonl) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    target = check_output_file(path, inputs, overwrite, recognise)
    created = _make_parents(target.parent)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        _remove_created(created)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | Path, rows: Iterable[dict], inputs: Iterable = (), overwrite: bool = False) -> None:
    """One JSON object per line, atomically (temporary name, then rename)."""
    with output_file(path, inputs, overwrite) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_run_file(path: str | Path, text: str) -> Path:
    """Replace a file a run folder of ours holds by name (``report.md``, ``eval.json``), atomically."""
    with output_file(path, overwrite=True, recognise=lambda _: True) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def is_own_folder(folder: Path, command: str, legacy: Callable[[Path], bool] | None = None) -> bool:
    """``folder`` was written by ``command``: its marker says so (or, for folders written before the
    marker existed, ``legacy`` recognises it)."""
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("command") == command
    return bool(legacy and legacy(folder))


def foreign_entries(folder: Path) -> list[str]:
    """Entries of one of our folders that its marker does not list (a user's file put there later)."""
    marker = read_marker(folder)
    if marker is None:
        return []
    ours = set(marker["files"]) | {MARKER}
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in ours)


def check_output_folder(path: str | Path, command: str, inputs: Iterable = (), overwrite: bool = True,
                        legacy: Callable[[Path], bool] | None = None) -> Path:
    """Refuse a folder output that is a file, holds an input or the current folder, or exists with
    content that is not an earlier output of ``command`` (or is, but ``overwrite`` is off)."""
    target = _resolved(path)
    if target.is_symlink():
        raise OutputError(f"{path}: is a symbolic link; give the real folder (nothing was changed)")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{path}: exists and is a file; the output must be a folder")
    if _is_within(_resolved(os.getcwd()), target):
        raise OutputError(f"{path}: is the current folder or holds it; choose a new folder for the output")
    _check_not_input(target, _local_inputs(inputs), "folder")
    if target.is_dir() and any(target.iterdir()):
        if not is_own_folder(target, command, legacy):
            raise OutputError(f"{path}: exists and holds files rlhf {command} did not write; "
                              "choose a new folder (nothing was changed)")
        foreign = foreign_entries(target)
        if foreign:
            raise OutputError(f"{path}: holds {', '.join(foreign[:3])}, which rlhf {command} did not write; "
                              "move it or choose a new folder (nothing was changed)")
        if not overwrite:
            raise OutputError(f"{path}: exists (an earlier output of rlhf {command}); "
                              "pass --overwrite to replace it")
    staging = target.with_name(target.name + ".incomplete")
    if staging.exists() and not is_staging(staging, command):
        raise OutputError(f"{staging}: exists and was not made by rlhf {command}; move it away first")
    return target


def is_staging(folder: Path, command: str) -> bool:
    marker = read_marker(folder)
    return folder.is_dir() and marker is not None and marker.get("command") == command


def begin_folder(target: Path, command: str) -> tuple[Path, list[Path]]:
    """Create ``TARGET.incomplete/`` (removing an earlier one of ours) with its marker."""
    staging = target.with_name(target.name + ".incomplete")
    if staging.exists():
        if not is_staging(staging, command):
            raise OutputError(f"{staging}: exists and was not made by rlhf {command}; move it away first")
        shutil.rmtree(staging)
    created = _make_parents(target.parent)
    staging.mkdir()
    (staging / MARKER).write_text(json.dumps({"command": command, "files": []}))
    return staging, created


def finish_folder(staging: Path, target: Path, command: str, legacy: Callable[[Path], bool] | None = None) -> None:
    """Record what the staging folder holds in its marker and rename it into place; an earlier output
    of ours is moved aside first and removed only once the new one is in place."""
    files = sorted(entry.name for entry in staging.iterdir() if entry.name != MARKER)
    (staging / MARKER).write_text(json.dumps({"command": command, "files": files}, indent=1))
    if target.is_dir() and any(target.iterdir()) and (
            not is_own_folder(target, command, legacy) or foreign_entries(target)):
        raise OutputError(f"{target}: files appeared there while rlhf {command} ran; the finished output is "
                          f"kept in {staging}")
    previous = None
    if target.exists():
        previous = target.with_name(f"{target.name}.replaced-{os.getpid()}")
        target.rename(previous)
    staging.rename(target)
    if previous is not None:
        shutil.rmtree(previous)


def abandon_folder(staging: Path, created: list[Path]) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    _remove_created(created)


@contextmanager
def output_folder(path: str | Path, command: str, inputs: Iterable = (), overwrite: bool = True,
                  legacy: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield ``PATH.incomplete/`` to write into; renamed to ``PATH`` on success, removed on failure."""
    target = check_output_folder(path, command, inputs, overwrite, legacy)
    staging, created = begin_folder(target, command)
    try:
        yield staging
    except BaseException:
        abandon_folder(staging, created)
        raise
    finish_folder(staging, target, command, legacy)
