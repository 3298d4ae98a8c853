"""The labeling database: SQLite in WAL mode, one short transaction per write.

Tables: ``users`` (labelers and admins; an admin can disable one), ``tasks`` (a prompt, and for
rankings its K responses), ``assignments`` (one row per task and labeler, the unit a labeler sees
and edits), ``submissions`` (append-only: every answer ever submitted, numbered per assignment, so
an edit never loses the earlier answer; exports read the newest revision of each assignment, so
nothing is duplicated either), ``sessions`` (one row per login: the SHA-256 of the random token in
the cookie, never the token itself) and ``audit`` (logins, failures, logouts, throttled attempts,
admin actions).

The database file (and its ``-wal``/``-shm``) is created readable by its owner only. It holds no
signing key (see :func:`rlhf.label.security.load_secret_key`): a copy of it lets nobody log in.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from rlhf.data.records import DataError
from rlhf.label.security import SessionPolicy, create_private_file, make_private

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('demonstration', 'ranking')),
    prompt TEXT NOT NULL,              -- JSON conversation
    responses TEXT,                    -- JSON list of {"text", "model"} for rankings
    prompt_user_id TEXT,
    category TEXT,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'submitted', 'skipped')),
    UNIQUE (task_id, user_id)
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY,
    assignment_id INTEGER NOT NULL REFERENCES assignments(id),
    revision INTEGER NOT NULL,
    answer TEXT NOT NULL,              -- JSON, see rlhf.label.answers
    submitted_at REAL NOT NULL,
    UNIQUE (assignment_id, revision)
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,       -- SHA-256 of the cookie's token
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    event TEXT NOT NULL,               -- see AUDIT_EVENTS
    actor TEXT NOT NULL,               -- who: the (attempted) username, or 'cli'
    client_ip TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS assignments_by_user ON assignments(user_id, id);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user_id);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit(actor, event, at);
CREATE INDEX IF NOT EXISTS audit_by_address ON audit(client_ip, event, at);
"""
AUDIT_EVENTS = ("login", "login_failed", "login_throttled", "logout", "user_added", "user_disabled",
                "user_enabled", "password_reset")
REQUEST_BUSY_TIMEOUT_S = 2.0  # a web request waits this long for the write lock, then answers 503
COMMAND_BUSY_TIMEOUT_S = 30.0
MIN_PASSWORD_CHARS = 8
MAX_USERNAME_CHARS = 64


class WriterQueue:
    """A lock taken first come, first served: a releasing writer hands it to the longest waiting
    one (a plain lock lets any thread barge in, so under load one can lose every turn)."""

    def __init__(self):
        self._guard = threading.Lock()
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self._held = False

    def acquire(self, timeout: float) -> bool:
        with self._guard:
            if not self._held:
                self._held = True
                return True
            turn = threading.Event()
            self._waiting.append(turn)
        if turn.wait(timeout):
            return True
        with self._guard:
            if turn.is_set():  # handed over just as the wait timed out: it is ours
                return True
            self._waiting.remove(turn)
            return False

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().set()  # still held: now by the next in line
            else:
                self._held = False


class _Connection(sqlite3.Connection):
    """A connection that knows its busy timeout and its process's writer queue for its file."""

    busy_timeout_s: float
    writers: WriterQueue


_WRITER_QUEUES: dict[str, WriterQueue] = {}
_WRITER_QUEUES_GUARD = threading.Lock()


def _writer_queue(path: str | Path) -> WriterQueue:
    """One queue per database file in this process: its threads (a server's request threads) wait
    their turn in order, woken as the one before them commits, instead of polling SQLite's lock on a
    back-off of up to 100 ms (under load, a poller can miss every free moment for its whole timeout)."""
    key = str(Path(path).resolve())
    with _WRITER_QUEUES_GUARD:
        return _WRITER_QUEUES.setdefault(key, WriterQueue())


def connect(path: str | Path, busy_timeout_s: float = COMMAND_BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign keys on; a write
    waits up to ``busy_timeout_s`` for its turn among this process's writers, then up to
    ``busy_timeout_s`` for another process's, then raises ``sqlite3.OperationalError``
    ("database is locked")."""
    connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False,
                                 factory=_Connection)
    connection.busy_timeout_s = busy_timeout_s
    connection.writers = _writer_queue(path)
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def is_busy(error: sqlite3.OperationalError) -> bool:
    """The error SQLite gives when another connection held the lock for the whole busy timeout."""
    return "locked" in str(error) or "busy" in str(error)


@contextmanager
def transaction(connection: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` … ``COMMIT``: writers queue on the database lock instead of failing mid-way
    (those of this process first on its writer queue, in turn; see :func:`connect`)."""
    writers = getattr(connection, "writers", None)
    if writers is not None and not writers.acquire(timeout=connection.busy_timeout_s):
        raise sqlite3.OperationalError("database is locked: this process's other writers held it "
                                       f"for {connection.busy_timeout_s:g} s")
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        if writers is not None:
            writers.release()


SQLITE_HEADER = b"SQLite format 3\x00"


def require_database(path: str | Path, create: bool = False) -> None:
    """Refuse a database that does not exist (unless ``create``: only ``add-user`` creates one), and any
    existing file that is not a labeling database of ours, before it is opened (opening would add our
    tables to it and tighten its permissions: a file we did not create is left as it is)."""
    path = Path(path)
    if not path.exists():
        if create:
            return
        raise DataError(f"{path}: no such database (create one with 'rlhf label add-user --db {path} NAME')")
    refused = f"{path}: not an rlhf labeling database"
    try:
        with open(path, "rb") as handle:
            if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise DataError(f"{refused} (not an SQLite file); nothing was changed")
        reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            reader.close()
    except (OSError, sqlite3.DatabaseError) as error:
        raise DataError(f"{refused} ({error}); nothing was changed") from None
    if "users" not in tables:  # every version of our schema has it
        raise DataError(f"{refused} (an SQLite database without the labeling tables); nothing was changed")


def initialise(path: str | Path) -> sqlite3.Connection:
    """Open the database, creating it (mode 0600) if missing and bringing an older one up to date:
    permissions tightened to 0600, the ``disabled`` column added, a signing key that older
    versions kept in the database wiped."""
    if not create_private_file(path):
        for name in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")):
            if name.exists():
                make_private(name)
    connection = connect(path)
    connection.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
    columns = {row["name"] for row in connection.execute("PRAGMA table_info(users)")}
    if "disabled" not in columns:
        connection.execute("ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0")
    _wipe_stored_secret(connection, path)
    return connection


def _wipe_stored_secret(connection: sqlite3.Connection, path: str | Path) -> None:
    """Older versions kept the cookie-signing key in a ``settings`` table; anyone with a copy of the
    file could forge sessions. Delete it with ``secure_delete`` (the bytes are overwritten, not
    just unlinked) and checkpoint the WAL so that no old page keeps it either."""
    has_settings = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'settings'").fetchone()
    if not has_settings:
        return
    connection.execute("PRAGMA secure_delete=ON")
    with transaction(connection):
        connection.execute("DELETE FROM settings")
        connection.execute("DROP TABLE settings")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("PRAGMA secure_delete=OFF")
    logger.warning("%s: removed the signing key that older versions stored in the database "
                   "(it now lives in %s.key); everyone logs in again", path, path)


class UserExists(ValueError):
    pass


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password: at least {MIN_PASSWORD_CHARS} characters")


def add_user(connection: sqlite3.Connection, username: str, password: str, is_admin: bool = False) -> int:
    if not username or len(username) > MAX_USERNAME_CHARS \
            or not username.replace("-", "").replace("_", "").replace(".", "").isalnum() or not username.isascii():
        raise ValueError(f"username {username!r}: use up to {MAX_USERNAME_CHARS} ASCII letters, digits, "
                         "'-', '_' or '.'")
    _check_password(password)
    try:
        with transaction(connection):
            cursor = connection.execute(
                "INSERT INTO users (username, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                (username, generate_password_hash(password), int(is_admin), time.time()))
    except sqlite3.IntegrityError:
        raise UserExists(f"user {username!r} already exists") from None
    return cursor.lastrowid


def user_by_name(connection: sqlite3.Connection, username: str) -> sqlite3.Row:
    """The user, or ``LookupError`` naming the missing one."""
    row = connection.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    if row is None:
        raise LookupError(f"no user {username!r}")
    return row


def set_password(connection: sqlite3.Connection, user_id: int, password: str) -> None:
    """Replace the password and end every session of the user (whoever had it must log in again)."""
    _check_password(password)
    password_hash = generate_password_hash(password)
    with transaction(connection):
        connection.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
        connection.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))


def set_disabled(connection: sqlite3.Connection, user_id: int, disabled: bool) -> None:
    """Disable (or enable) an account; disabling ends its sessions at once."""
    with transaction(connection):
        connection.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id))
        connection.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))


def authenticate(connection: sqlite3.Connection, username: str, password: str) -> sqlite3.Row | None:
    """The user if the password is right (disabled or not: the caller says which), else ``None``;
    the same work whether or not the user exists."""
    row = connection.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    if row is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return row if check_password_hash(row["password_hash"], password) else None


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))


# ---- sessions ------------------------------------------------------------------------------------

def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_session(connection: sqlite3.Connection, user_id: int, policy: SessionPolicy) -> str:
    """A new session for the user; returns the random token for the cookie (only its hash is
    stored). Expired sessions of everyone are deleted on the way."""
    token, now = secrets.token_urlsafe(32), time.time()
    with transaction(connection):
        connection.execute("DELETE FROM sessions WHERE last_seen < ? OR created_at < ?",
                           (now - policy.idle_timeout_s, now - policy.absolute_timeout_s))
        connection.execute("INSERT INTO sessions (token_hash, user_id, created_at, last_seen) VALUES (?, ?, ?, ?)",
                           (_token_hash(token), user_id, now, now))
    return token


def session_user(connection: sqlite3.Connection, token: str, policy: SessionPolicy) -> dict | None:
    """The user behind a cookie's token (``id``, ``username``, ``is_admin``), or ``None`` when the
    session is unknown, ended, expired or its account disabled. Records the visit in ``last_seen``
    (at most every ``policy.touch_interval_s``)."""
    row = connection.execute(
        "SELECT s.token_hash, s.created_at, s.last_seen, u.id, u.username, u.is_admin, u.disabled "
        "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?", (_token_hash(token),)).fetchone()
    if row is None:
        return None
    now = time.time()
    if row["disabled"] or policy.expired(row["created_at"], row["last_seen"], now):
        with transaction(connection):
            connection.execute("DELETE FROM sessions WHERE token_hash = ?", (row["token_hash"],))
        return None
    if now - row["last_seen"] >= policy.touch_interval_s:
        with transaction(connection):
            connection.execute("UPDATE sessions SET last_seen = ? WHERE token_hash = ?", (now, row["token_hash"]))
    return {"id": row["id"], "username": row["username"], "is_admin": bool(row["is_admin"])}


def end_session(connection: sqlite3.Connection, token: str) -> None:
    with transaction(connection):
        connection.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),))


# ---- the audit log -------------------------------------------------------------------------------

def record(connection: sqlite3.Connection, event: str, actor: str, client_ip: str | None = None,
           detail: str = "") -> int:
    """Append one event to the audit log (inside the caller's transaction if one is open); returns its id."""
    assert event in AUDIT_EVENTS, event
    cursor = connection.execute("INSERT INTO audit (at, event, actor, client_ip, detail) VALUES (?, ?, ?, ?, ?)",
                                (time.time(), event, actor[:MAX_USERNAME_CHARS], client_ip, detail))
    return cursor.lastrowid


def amend(connection: sqlite3.Connection, event_id: int, event: str, detail: str) -> None:
    """Change what an event turned out to be (a login attempt is a failure until the password checks out)."""
    assert event in AUDIT_EVENTS, event
    with transaction(connection):
        connection.execute("UPDATE audit SET event = ?, detail = ? WHERE id = ?", (event, detail, event_id))


def failed_logins(connection: sqlite3.Connection, since: float, actor: str | None = None,
                  client_ip: str | None = None) -> list[float]:
    """Times of failed logins after ``since``: for an account (``actor``, and only after its last
    successful login) or from an address (``client_ip``)."""
    if actor is not None:
        rows = connection.execute(
            "SELECT at FROM audit WHERE actor = ? AND event = 'login_failed' AND at > ? AND at > "
            "COALESCE((SELECT MAX(at) FROM audit WHERE actor = ? AND event = 'login'), 0)",
            (actor[:MAX_USERNAME_CHARS], since, actor[:MAX_USERNAME_CHARS]))
    else:
        rows = connection.execute("SELECT at FROM audit WHERE client_ip = ? AND event = 'login_failed' AND at > ?",
                                  (client_ip, since))
    return [at for (at,) in rows]


def audit_log(connection: sqlite3.Connection, limit: int = 50) -> list[sqlite3.Row]:
    """The newest ``limit`` events, oldest first."""
    rows = connection.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return rows[::-1]


def format_time(at: float) -> str:
    """A timestamp as ``2026-11-27 14:03:09`` in UTC."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def audit_line(row: sqlite3.Row) -> str:
    """One event as a line for a terminal: time (UTC), event, actor, address, detail, with control
    characters escaped (an attempted username is whatever a stranger typed)."""
    fields = (format_time(row["at"]), row["event"], row["actor"], row["client_ip"] or "-", row["detail"])
    return "  ".join(_escape_controls(str(field)) for field in fields)


def _escape_controls(text: str) -> str:
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


# ---- users, tasks and answers --------------------------------------------------------------------

def users_with_progress(connection: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every account with its ``assigned`` and ``done`` (submitted or skipped) assignment counts."""
    return connection.execute(
        "SELECT u.id, u.username, u.is_admin, u.disabled, u.created_at, COUNT(a.id) AS assigned, "
        "COALESCE(SUM(a.status != 'pending'), 0) AS done "
        "FROM users u LEFT JOIN assignments a ON a.user_id = u.id GROUP BY u.id ORDER BY u.id").fetchall()


def labelers(connection: sqlite3.Connection) -> list[sqlite3.Row]:
    """The accounts that get tasks: labelers, not admins, and not disabled ones."""
    return connection.execute("SELECT * FROM users WHERE is_admin = 0 AND disabled = 0 ORDER BY id").fetchall()


def add_tasks(connection: sqlite3.Connection, tasks: list[dict], assignees: list[list[int]]) -> list[int]:
    """Insert tasks and their assignments in one transaction: all of them or none."""
    now, ids = time.time(), []
    with transaction(connection):
        for task, users in zip(tasks, assignees, strict=True):
            cursor = connection.execute(
                "INSERT INTO tasks (kind, prompt, responses, prompt_user_id, category, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task["kind"], json.dumps(task["prompt"]), json.dumps(task.get("responses")),
                 task.get("user_id"), task.get("category"), task["source"], now))
            ids.append(cursor.lastrowid)
            connection.executemany("INSERT INTO assignments (task_id, user_id) VALUES (?, ?)",
                                   [(cursor.lastrowid, user) for user in users])
    return ids


def assignment_counts(connection: sqlite3.Connection) -> dict[int, int]:
    return dict(connection.execute("SELECT user_id, COUNT(*) FROM assignments GROUP BY user_id").fetchall())


ASSIGNMENT_QUERY = """
SELECT a.id, a.status, a.user_id, u.username, t.id AS task_id, t.kind, t.prompt, t.responses, t.category,
       t.prompt_user_id, t.source,
       (SELECT answer FROM submissions s WHERE s.assignment_id = a.id ORDER BY revision DESC LIMIT 1) AS answer,
       (SELECT MAX(revision) FROM submissions s WHERE s.assignment_id = a.id) AS revision
FROM assignments a JOIN tasks t ON t.id = a.task_id JOIN users u ON u.id = a.user_id
"""


def _decode(row: sqlite3.Row) -> dict:
    item = dict(row)
    item["prompt"] = json.loads(item["prompt"])
    item["responses"] = json.loads(item["responses"]) if item["responses"] else None
    item["answer"] = json.loads(item["answer"]) if item["answer"] else None
    return item


def user_assignments(connection: sqlite3.Connection, user_id: int) -> list[dict]:
    rows = connection.execute(ASSIGNMENT_QUERY + " WHERE a.user_id = ? ORDER BY a.id", (user_id,)).fetchall()
    return [_decode(row) for row in rows]


def user_assignment(connection: sqlite3.Connection, user_id: int, assignment_id: int) -> dict | None:
    """The assignment if it belongs to this user; ``None`` for anyone else's (or none at all)."""
    row = connection.execute(ASSIGNMENT_QUERY + " WHERE a.id = ? AND a.user_id = ?",
                             (assignment_id, user_id)).fetchone()
    return _decode(row) if row else None


def submit(connection: sqlite3.Connection, user_id: int, assignment_id: int, answer: dict) -> int:
    """Store a new revision of the answer and return its number (1 for the first)."""
    status = "skipped" if "skip" in answer else "submitted"
    with transaction(connection):
        owned = connection.execute("SELECT 1 FROM assignments WHERE id = ? AND user_id = ?",
                                   (assignment_id, user_id)).fetchone()
        if owned is None:
            raise LookupError(assignment_id)
        revision = connection.execute(
            "SELECT COALESCE(MAX(revision), 0) + 1 FROM submissions WHERE assignment_id = ?", (assignment_id,)
        ).fetchone()[0]
        connection.execute(
            "INSERT INTO submissions (assignment_id, revision, answer, submitted_at) VALUES (?, ?, ?, ?)",
            (assignment_id, revision, json.dumps(answer, ensure_ascii=False), time.time()))
        connection.execute("UPDATE assignments SET status = ? WHERE id = ?", (status, assignment_id))
    return revision


def answered(connection: sqlite3.Connection) -> list[dict]:
    """Every assignment's newest answer, with its task and labeler, in assignment order."""
    rows = connection.execute(ASSIGNMENT_QUERY + " WHERE a.status != 'pending' ORDER BY a.id").fetchall()
    return [_decode(row) for row in rows]
