"""The labeling database: SQLite in WAL mode, one short transaction per write.

Tables: ``users`` (labelers and admins), ``tasks`` (a prompt, and for rankings its K responses),
``assignments`` (one row per task and labeler, the unit a labeler sees and edits) and
``submissions`` (append-only: every answer ever submitted, numbered per assignment, so an edit
never loses the earlier answer; exports read the newest revision of each assignment, so nothing
is duplicated either).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
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
CREATE INDEX IF NOT EXISTS assignments_by_user ON assignments(user_id, id);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign keys on."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` … ``COMMIT``: writers queue on the database lock instead of failing mid-way."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def initialise(path: str | Path) -> sqlite3.Connection:
    connection = connect(path)
    connection.executescript(SCHEMA)  # idempotent: every statement is IF NOT EXISTS
    connection.execute("INSERT OR IGNORE INTO settings VALUES ('secret_key', ?)", (secrets.token_hex(32),))
    return connection


def secret_key(connection: sqlite3.Connection) -> str:
    """Kept in the database so that sessions survive a restart of the server."""
    return connection.execute("SELECT value FROM settings WHERE key = 'secret_key'").fetchone()[0]


class UserExists(ValueError):
    pass


def add_user(connection: sqlite3.Connection, username: str, password: str, is_admin: bool = False) -> int:
    if not username or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"username {username!r}: use letters, digits, '-', '_' or '.'")
    if len(password) < 8:
        raise ValueError("password: at least 8 characters")
    try:
        with transaction(connection):
            cursor = connection.execute(
                "INSERT INTO users (username, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                (username, generate_password_hash(password), int(is_admin), time.time()))
    except sqlite3.IntegrityError:
        raise UserExists(f"user {username!r} already exists") from None
    return cursor.lastrowid


def authenticate(connection: sqlite3.Connection, username: str, password: str) -> sqlite3.Row | None:
    row = connection.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    if row is None:
        check_password_hash(_DUMMY_HASH, password)  # same work whether or not the user exists
        return None
    return row if check_password_hash(row["password_hash"], password) else None


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))


def labelers(connection: sqlite3.Connection) -> list[sqlite3.Row]:
    return connection.execute("SELECT * FROM users WHERE is_admin = 0 ORDER BY id").fetchall()


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
