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
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf.data.records import DataError

logger = logging.getLogger(__name__)

MARKER = ".rlhf-output.json"


class OutputError(DataError):
    """An output path that would destroy or shadow something the command did not create."""


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _real(path: str | Path) -> Path:
    """Where a path really leads (symbolic links followed), for comparing two paths."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _under_a_file(path: Path) -> bool:
    """A folder on the way to ``path`` is a file: nothing can be created there."""
    return any(parent.exists() and not parent.is_dir() for parent in path.parents)


def _local_inputs(inputs: Iterable[str | Path | None]) -> list[Path]:
    return [Path(p) for p in inputs if p and not str(p).startswith("hf:")]


def _check_not_input(path: Path, inputs: list[Path], what: str) -> None:
    """Neither the output nor anything in it may be an input, however either is spelt (``..``, links)."""
    for source in inputs:
        same = path.exists() and source.exists() and os.path.samefile(path, source)
        if same or _is_within(_real(source), _real(path)):
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
    with _inspecting(path):
        if str(path).endswith(("/", os.sep)) or target.is_dir():
            raise OutputError(f"{path}: is a folder; the output must be a file path")
        if _under_a_file(target):
            raise OutputError(f"{path}: a folder on its path is a file")
        _check_not_input(target, _local_inputs(inputs), "file")
        if target.exists() or target.is_symlink():
            if not target.is_file() or target.is_symlink():
                raise OutputError(f"{path}: exists and is not a regular file; refusing to replace it")
            if not overwrite:
                raise OutputError(f"{path}: exists; pass --overwrite to replace it")
            if not recognise(target):
                raise OutputError(f"{path}: exists and does not look like a file rlhf wrote; "
                                  "refusing to overwrite it")
    return target


def check_appendable(path: str | Path, inputs: Iterable = ()) -> Path:
    """A JSONL file that rows are appended to (``metrics_file``): new, or JSONL already; never a folder,
    an input, or a file of another kind."""
    target = _resolved(path)
    with _inspecting(path):
        if target.is_dir() or _under_a_file(target):
            raise OutputError(f"{path}: is a folder or lies under a file; a metrics file is a JSONL file path")
        _check_not_input(target, _local_inputs(inputs), "file")
        if target.exists() and not (target.is_file() and looks_like_jsonl(target)):
            raise OutputError(f"{path}: exists and is not a JSONL file; rlhf appends metrics only to its own")
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
    with _inspecting(path):
        created = _make_parents(target.parent)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp makes 0600; give the file the mode a plain open() would (or the replaced file's)
        os.chmod(temporary, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~UMASK)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        _remove_created(created)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once, at import (before any thread)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def write_jsonl(path: str | Path, rows: Iterable[dict], inputs: Iterable = (), overwrite: bool = False) -> None:
    """One JSON object per line, atomically (temporary name, then rename)."""
    with output_file(path, inputs, overwrite) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def starts_like(text: str) -> Callable[[Path], bool]:
    """Recognises a file we wrote by the first characters we always write (a report's heading)."""
    def recognise(path: Path) -> bool:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read(len(text) + 64).lstrip().startswith(text)
        except OSError:
            return False
    return recognise


def write_run_file(path: str | Path, text: str) -> Path:
    """Write or replace a file of a run folder (``report.md``, ``eval.json``, ``summary.json``)
    atomically; an existing one is replaced only if it begins as ours does (a user's own
    ``report.html`` put there is refused)."""
    head = text.lstrip()[:24]
    with output_file(path, overwrite=True, recognise=starts_like(head)) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


@dataclass(frozen=True)
class Earlier:
    """How to recognise a folder a command wrote before folders carried the marker: every file name
    in it matches ``names``; a finished one holds ``finished`` and passes ``check``."""

    names: str  # a regular expression for one file name
    finished: str
    check: Callable[[Path], bool] | None = None

    def owns(self, name: str) -> bool:
        return re.fullmatch(self.names, name) is not None


def ownership(folder: Path, command: str, earlier: Earlier | None = None) -> tuple[bool, list[str]]:
    """(whether ``command`` wrote ``folder``, the entries in it that it did not write).

    The marker answers both; a folder without one is ours when ``earlier`` recognises it, and then
    any entry whose name ``command`` never writes is somebody else's."""
    names = sorted(entry.name for entry in folder.iterdir())
    marker = read_marker(folder)
    if marker is not None:
        ours = set(marker["files"]) | {MARKER}
        return marker.get("command") == command, [name for name in names if name not in ours]
    if earlier is None or earlier.finished not in names or (earlier.check and not earlier.check(folder)):
        return False, names
    return True, [name for name in names if not earlier.owns(name)]


def is_staging(folder: Path, command: str, earlier: Earlier | None = None) -> bool:
    """``folder`` is a staging folder of ``command``: its marker says so, or (left by a version before
    the marker) it holds only names the command writes."""
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("command") == command
    return earlier is not None and all(earlier.owns(entry.name) for entry in folder.iterdir())


@contextmanager
def _inspecting(path: str | Path) -> Iterator[None]:
    """A folder that cannot be listed or created is a refused output, not a traceback."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"{path}: cannot be used as an output ({error.strerror or error})") from None


def check_output_folder(path: str | Path, command: str, inputs: Iterable = (), overwrite: bool = True,
                        earlier: Earlier | None = None) -> Path:
    """Refuse a folder output that is a link or a file, holds an input or the current folder, or exists
    with content that is not an earlier output of ``command`` (or is, but ``overwrite`` is off)."""
    target = _resolved(path)
    with _inspecting(path):
        if target.is_symlink():
            raise OutputError(f"{path}: is a symbolic link; give the real folder (nothing was changed)")
        if target.exists() and not target.is_dir():
            raise OutputError(f"{path}: exists and is a file; the output must be a folder")
        if _under_a_file(target):
            raise OutputError(f"{path}: a folder on its path is a file")
        if _is_within(_real(os.getcwd()), _real(target)):
            raise OutputError(f"{path}: is the current folder or holds it; choose a new folder for the output")
        _check_not_input(target, _local_inputs(inputs), "folder")
        if target.is_dir() and any(target.iterdir()):
            ours, foreign = ownership(target, command, earlier)
            if not ours:
                raise OutputError(f"{path}: exists and holds files rlhf {command} did not write; "
                                  "choose a new folder (nothing was changed)")
            if foreign:
                raise OutputError(f"{path}: holds {', '.join(foreign[:3])}, which rlhf {command} did not write; "
                                  "move it or choose a new folder (nothing was changed)")
            if not overwrite:
                raise OutputError(f"{path}: exists (an earlier output of rlhf {command}); "
                                  "pass --overwrite to replace it")
        staging = target.with_name(target.name + ".incomplete")
        if staging.exists() and not (staging.is_dir() and is_staging(staging, command, earlier)):
            raise OutputError(f"{staging}: exists and was not made by rlhf {command}; move it away first")
    return target


def begin_folder(target: Path, command: str, earlier: Earlier | None = None,
                 keep: bool = False) -> tuple[Path, list[Path]]:
    """Create ``TARGET.incomplete/`` with its marker. An earlier one of ours (after ``kill -9``) is
    removed — or, with ``keep`` (it holds checkpoints to resume from), used as it is."""
    staging = target.with_name(target.name + ".incomplete")
    with _inspecting(staging):
        if staging.exists():
            if not (staging.is_dir() and is_staging(staging, command, earlier)):
                raise OutputError(f"{staging}: exists and was not made by rlhf {command}; move it away first")
            if keep:
                return staging, []
            shutil.rmtree(staging)
        created = _make_parents(target.parent)
        staging.mkdir()
    (staging / MARKER).write_text(json.dumps({"command": command, "files": []}))
    return staging, created


def finish_folder(staging: Path, target: Path, command: str, earlier: Earlier | None = None) -> None:
    """Record what the staging folder holds in its marker and rename it into place. An earlier output
    of ours is moved aside first and removed only once the new one is in place, and only if nothing
    that is not ours appeared in it meanwhile."""
    files = sorted(entry.name for entry in staging.iterdir() if entry.name != MARKER)
    (staging / MARKER).write_text(json.dumps({"command": command, "files": files}, indent=1))
    if target.is_dir() and any(target.iterdir()) and ownership(target, command, earlier) != (True, []):
        raise OutputError(f"{target}: files appeared there while rlhf {command} ran; the finished output is "
                          f"kept in {staging}")
    previous = None
    if target.exists():
        previous = target.with_name(f"{target.name}.replaced-{os.getpid()}")
        target.rename(previous)
    staging.rename(target)
    if previous is None:
        return
    ours, foreign = ownership(previous, command, earlier)
    if any(previous.iterdir()) and (not ours or foreign):  # appeared in the instant before the rename
        logger.warning("%s: the earlier output holds %s, which rlhf %s did not write; it is kept in %s",
                       target, ", ".join(foreign[:3]), command, previous)
        return
    shutil.rmtree(previous)


def abandon_folder(staging: Path, created: list[Path]) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    _remove_created(created)


@contextmanager
def output_folder(path: str | Path, command: str, inputs: Iterable = (), overwrite: bool = True,
                  earlier: Earlier | None = None) -> Iterator[Path]:
    """Yield ``PATH.incomplete/`` to write into; renamed to ``PATH`` on success, removed on failure."""
    target = check_output_folder(path, command, inputs, overwrite, earlier)
    staging, created = begin_folder(target, command, earlier)
    try:
        yield staging
    except BaseException:
        abandon_folder(staging, created)
        raise
    finish_folder(staging, target, command, earlier)
