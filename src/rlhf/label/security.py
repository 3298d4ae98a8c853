"""The labeling app's security policies: session lifetimes, login throttling, the signing key,
safe redirects and files only their owner can read.

Nothing here touches Flask: the app (:mod:`rlhf.label.app`) and the command line
(:mod:`rlhf.label.cli`) apply these rules; the tests check them on their own.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from rlhf.data.records import DataError

logger = logging.getLogger(__name__)

SECRET_KEY_VARIABLE = "RLHF_LABEL_SECRET_KEY"
MIN_SECRET_KEY_CHARS = 32
PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class SessionPolicy:
    """How long a login lasts: ``idle_timeout_s`` without a request, and never longer than
    ``absolute_timeout_s`` after the password was typed (requests do not extend that)."""

    idle_timeout_s: float = 2 * 3600.0
    absolute_timeout_s: float = 12 * 3600.0

    def __post_init__(self):
        if not self.idle_timeout_s > 0:
            raise DataError(f"idle timeout: must be positive, got {self.idle_timeout_s} s")
        if not self.absolute_timeout_s >= self.idle_timeout_s:
            raise DataError(f"session lifetime: must be at least the idle timeout ({self.idle_timeout_s} s), "
                            f"got {self.absolute_timeout_s} s")

    @property
    def touch_interval_s(self) -> float:
        """``last_seen`` is written at most this often (a tenth of the idle timeout, at most a
        minute): reading a page need not be a write to the database every time."""
        return min(60.0, self.idle_timeout_s / 10)

    def expired(self, created_at: float, last_seen: float, now: float) -> bool:
        return now - last_seen > self.idle_timeout_s or now - created_at > self.absolute_timeout_s


@dataclass(frozen=True)
class LoginThrottle:
    """Back-off for password guessing, per account and per client address.

    Failed logins older than ``window_s`` are forgotten (for an account, so are those before its
    last successful login). Up to ``per_account`` (``per_address``) failures are free; after that
    each attempt must wait ``base_delay_s · 2^(extra failures)`` after the latest failure, capped
    at ``window_s``; an attempt made sooner is refused with 429 and a ``Retry-After`` without the
    password being checked."""

    window_s: float = 900.0
    per_account: int = 5
    per_address: int = 20
    base_delay_s: float = 2.0

    def __post_init__(self):
        if not self.window_s > 0 or not self.base_delay_s > 0:
            raise DataError("login throttle: window_s and base_delay_s must be positive")
        if self.per_account < 1 or self.per_address < 1:
            raise DataError("login throttle: per_account and per_address must be at least 1")

    def wait_s(self, failures: list[float], free: int, now: float) -> float:
        """Seconds still to wait before the next attempt, given the times of the failures that
        count (0 if it may go ahead)."""
        if len(failures) < free:
            return 0.0
        delay = min(self.window_s, self.base_delay_s * 2 ** (len(failures) - free))
        return max(0.0, max(failures) + delay - now)


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` in whole seconds, rounded up (never 0: that would invite an instant retry)."""
    return str(max(1, math.ceil(wait_s)))


_SEGMENT = r"[A-Za-z0-9_.-]+"
_SAFE_PATH = re.compile(rf"/(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?")  # segments split by one '/': no backtracking
MAX_NEXT_CHARS = 200


def safe_next(target: str | None) -> str:
    """``target`` if it is a plain path on this site (``/task/3``), else ``/``.

    Only letters, digits, ``_ . -`` and single slashes pass: no scheme, host, ``//``, backslash,
    whitespace, control character or percent sign, so that no browser can read it as another site
    (``/\\tevil``, ``/\\evil``, ``///evil`` all become ``/``)."""
    if not target or len(target) > MAX_NEXT_CHARS or not _SAFE_PATH.fullmatch(target):
        return "/"
    return target


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_private_file(path: str | Path) -> bool:
    """Create an empty file readable only by its owner (0600); False if it already existed."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_MODE)
    except FileExistsError:
        return False
    os.fchmod(descriptor, PRIVATE_MODE)  # whatever the umask
    os.close(descriptor)
    return True


def make_private(path: str | Path) -> None:
    """Take away group and other permissions from an existing file, with a warning (only a
    warning if the file is somebody else's and cannot be changed)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, PRIVATE_MODE)
    except PermissionError:
        logger.warning("%s is readable by others (mode %o) and not ours to change; chmod 600 it", path, mode)
    else:
        logger.warning("%s was readable by others (mode %o); now %o", path, mode, PRIVATE_MODE)


def key_file(database: str | Path) -> Path:
    return Path(f"{database}.key")


def load_secret_key(database: str | Path) -> str:
    """The key that signs session cookies and CSRF tokens: ``$RLHF_LABEL_SECRET_KEY`` if set, else
    the file ``DATABASE.key`` (created 0600 with a new random key if missing). Never the database:
    a copy of the database must not let anyone forge cookies."""
    value = os.environ.get(SECRET_KEY_VARIABLE)
    if value is not None:
        if len(value) < MIN_SECRET_KEY_CHARS:
            raise DataError(f"{SECRET_KEY_VARIABLE}: at least {MIN_SECRET_KEY_CHARS} characters, got {len(value)}")
        return value
    path = key_file(database)
    if not path.exists():
        _write_new_key(path)
    make_private(path)
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: the signing key cannot be read ({error}); delete the file to make a new one "
                        "(everyone logs in again)") from None
    if len(value) < MIN_SECRET_KEY_CHARS:
        raise DataError(f"{path}: the signing key is shorter than {MIN_SECRET_KEY_CHARS} characters; "
                        "delete the file to make a new one (everyone logs in again)")
    return value


def _write_new_key(path: Path) -> None:
    """Write a random key to a private temporary file and link it into place: a second server
    starting at the same moment reads one complete key, never an empty file."""
    staging = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    while not create_private_file(staging):  # that name is somebody else's file: never ours to remove
        staging = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        staging.write_text(secrets.token_hex(32) + "\n", encoding="ascii")
        os.link(staging, path)
        logger.info("%s: new signing key", path)
    except FileExistsError:
        pass  # somebody else's key won the race: use theirs
    finally:
        staging.unlink()
