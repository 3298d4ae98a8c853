"""The admin page (accounts, progress, agreement, audit), its role and CSRF checks, and the
account and audit commands of ``rlhf label``."""

import json
import sqlite3

import pytest

from label_helpers import PASSWORD, csrf_token, login, make_app
from rlhf.cli import main
from rlhf.label import db
from rlhf.label.answers import agreement, to_records
from rlhf.label.load import load_tasks, read_ranking_tasks
from rlhf.label.security import SECRET_KEY_VARIABLE

NEW_PASSWORD = "battery staple"


@pytest.fixture
def database(tmp_path, monkeypatch):
    """root (admin); alice and bob (labelers) both rank the same three tasks of K = 3."""
    monkeypatch.delenv(SECRET_KEY_VARIABLE, raising=False)
    path = tmp_path / "labels.db"
    connection = db.initialise(path)
    db.add_user(connection, "root", PASSWORD, is_admin=True)
    for name in ("alice", "bob"):
        db.add_user(connection, name, PASSWORD)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"q{i}", "responses": ["a", "b", "c"]}) + "\n" for i in range(3)))
    load_tasks(connection, read_ranking_tasks(tasks), overlap=1.0, replicas=2)
    connection.close()
    return path


@pytest.fixture
def app(database):
    return make_app(database)


def _client(app, username, password=PASSWORD):
    client = app.test_client()
    assert login(client, username, password).status_code == 302
    return client


def _user(database, username) -> sqlite3.Row | None:
    connection = db.connect(database)
    try:
        return db.user_by_name(connection, username)
    except LookupError:
        return None
    finally:
        connection.close()


def _audit(database) -> list[tuple]:
    connection = db.connect(database)
    rows = [(r["event"], r["actor"], r["detail"]) for r in db.audit_log(connection, 1000)]
    connection.close()
    return rows


def _admin_posts(database, token: str) -> dict[str, dict]:
    bob = _user(database, "bob")["id"]
    return {"/admin/users": {"username": "mallory", "password": PASSWORD, "is_admin": "on", "csrf_token": token},
            f"/admin/users/{bob}/disable": {"csrf_token": token},
            f"/admin/users/{bob}/enable": {"csrf_token": token},
            f"/admin/users/{bob}/password": {"password": NEW_PASSWORD, "csrf_token": token}}


def test_a_labeler_gets_403_on_every_admin_route_and_changes_nothing(app, database):
    alice = _client(app, "alice")
    page = alice.get("/admin")
    assert page.status_code == 403 and b"this page is for admins" in page.data
    assert b'id="admin-link"' not in alice.get("/").data
    for path, form in _admin_posts(database, csrf_token(alice)).items():
        assert alice.post(path, data=form).status_code == 403, path
    anonymous = app.test_client()
    assert anonymous.get("/admin").headers["Location"].startswith("/login")
    for path, form in _admin_posts(database, csrf_token(anonymous)).items():
        response = anonymous.post(path, data=form)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login"), path
    assert _user(database, "mallory") is None and not _user(database, "bob")["disabled"]
    assert login(app.test_client(), "bob").status_code == 302  # the password is unchanged
    assert {event for event, _, _ in _audit(database)} == {"login"}


def test_admin_forms_need_the_csrf_token(app, database):
    root = _client(app, "root")
    other = _client(app, "alice")
    for token in (None, "forged." + "a" * 40, csrf_token(other)):  # none, forged, someone else's
        for path, form in _admin_posts(database, token).items():
            if token is None:
                form.pop("csrf_token")
            response = root.post(path, data=form)
            assert response.status_code == 400 and b"csrf_token" in response.data, (path, token)
    assert _user(database, "mallory") is None and not _user(database, "bob")["disabled"]


def test_disabling_a_user_ends_their_session_at_once(app, database):
    root, bob = _client(app, "root"), _client(app, "bob")
    bob_id = _user(database, "bob")["id"]
    assert root.post(f"/admin/users/{bob_id}/disable", data={"csrf_token": csrf_token(root)}).status_code == 302
    assert bob.get("/api/tasks").status_code == 401
    refused = login(app.test_client(), "bob")
    assert refused.status_code == 401 and b"this account is disabled" in refused.data
    assert "<td>bob</td>\n      <td>labeler</td>\n      <td>disabled</td>" in root.get("/admin").get_data(as_text=True)
    assert root.post(f"/admin/users/{bob_id}/enable", data={"csrf_token": csrf_token(root)}).status_code == 302
    assert login(app.test_client(), "bob").status_code == 302
    myself = root.post(f"/admin/users/{_user(database, 'root')['id']}/disable", data={"csrf_token": csrf_token(root)})
    assert myself.status_code == 400 and b"you cannot disable your own account" in myself.data
    events = [(event, actor, detail) for event, actor, detail in _audit(database) if event.startswith("user_")]
    assert events == [("user_disabled", "root", "user bob"), ("user_enabled", "root", "user bob")]


def test_resetting_a_password_ends_the_old_sessions(app, database):
    root, bob = _client(app, "root"), _client(app, "bob")
    bob_id = _user(database, "bob")["id"]
    short = root.post(f"/admin/users/{bob_id}/password", data={"password": "short", "csrf_token": csrf_token(root)})
    assert short.status_code == 400 and b"password: at least 8 characters" in short.data
    assert bob.get("/api/tasks").status_code == 200
    response = root.post(f"/admin/users/{bob_id}/password",
                         data={"password": NEW_PASSWORD, "csrf_token": csrf_token(root)})
    assert response.status_code == 302
    assert bob.get("/api/tasks").status_code == 401
    assert login(app.test_client(), "bob").status_code == 401
    assert login(app.test_client(), "bob", NEW_PASSWORD).status_code == 302
    assert ("password_reset", "root", "user bob") in _audit(database)


def test_admin_adds_accounts(app, database):
    root = _client(app, "root")
    form = {"username": "carol", "password": PASSWORD, "csrf_token": csrf_token(root)}
    assert root.post("/admin/users", data=form).status_code == 302
    assert login(app.test_client(), "carol").status_code == 302 and not _user(database, "carol")["is_admin"]
    again = root.post("/admin/users", data=form)
    assert again.status_code == 400 and b"user &#39;carol&#39; already exists" in again.data
    bad = root.post("/admin/users", data=form | {"username": "<script>"})
    assert bad.status_code == 400 and b"<script>" not in bad.data
    assert ("user_added", "root", "labeler carol") in _audit(database)


def test_unknown_or_malformed_user_ids(app):
    root = _client(app, "root")
    token = csrf_token(root)
    assert root.post("/admin/users/999/disable", data={"csrf_token": token}).status_code == 404
    assert root.post("/admin/users/١/disable", data={"csrf_token": token}).status_code == 400


def test_admin_page_shows_progress_agreement_and_events(app, database):
    for name, order in (("alice", [0, 1, 2]), ("bob", [0, 2, 1])):
        client = _client(app, name)
        token = csrf_token(client)
        tasks = client.get("/api/tasks").get_json()["tasks"]
        for task in tasks[:2]:  # two of their three tasks
            answer = {"order": order, "ratings": [4, 4, 4]}
            assert client.post(f"/api/tasks/{task['id']}", json=answer, headers={"X-CSRFToken": token}).status_code \
                == 200
    page = _client(app, "root").get("/admin").get_data(as_text=True)
    for name in ("alice", "bob"):
        assert f"<td>{name}</td>\n      <td>labeler</td>\n      <td>active</td>\n      <td>2 / 3</td>" in page
    connection = db.connect(database)
    expected = agreement(to_records(db.answered(connection))[1])
    connection.close()
    assert expected["tasks"] == 2 and expected["overall"] == pytest.approx(2 / 3)
    assert "Overall 66.7 %" in page and "over 6 response pairs on 2 shared tasks" in page
    assert "login" in page and "127.0.0.1" in page  # recent events


# ---- the command line ----------------------------------------------------------------------------

def test_audit_command_prints_events_with_control_characters_escaped(app, database, capsys):
    hostile = "\x1b[2J\x1b[31mroot\u202e"  # clear the screen, turn red, reverse the text
    assert login(app.test_client(), hostile, "wrong password").status_code == 401
    _client(app, "alice").post("/logout", data={"csrf_token": "x"})
    capsys.readouterr()
    assert main(["label", "audit", "--db", str(database)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "login_failed  \\x1b[2J\\x1b[31mroot\\u202e  127.0.0.1  wrong username or password" in out
    assert "login  alice  127.0.0.1" in out
    assert main(["label", "audit", "--db", str(database), "--limit", "1"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "  login  alice  " in line  # the newest event
    with pytest.raises(SystemExit):
        main(["label", "audit", "--db", str(database), "--limit", "0"])


def test_account_commands(app, database, monkeypatch, capsys):
    bob = _client(app, "bob")
    assert main(["label", "disable-user", "--db", str(database), "bob"]) == 0
    assert bob.get("/api/tasks").status_code == 401 and _user(database, "bob")["disabled"]
    assert main(["label", "enable-user", "--db", str(database), "bob"]) == 0
    bob = _client(app, "bob")
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", NEW_PASSWORD)
    assert main(["label", "reset-password", "--db", str(database), "bob"]) == 0
    assert bob.get("/api/tasks").status_code == 401
    assert login(app.test_client(), "bob", NEW_PASSWORD).status_code == 302
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", "short")
    assert main(["label", "reset-password", "--db", str(database), "bob"]) == 2
    assert main(["label", "disable-user", "--db", str(database), "zed"]) == 2
    assert "no user 'zed'" in capsys.readouterr().err
    assert [(event, detail) for event, actor, detail in _audit(database) if actor == "cli"] == [
        ("user_disabled", "user bob"), ("user_enabled", "user bob"), ("password_reset", "user bob")]


def test_disabled_labelers_get_no_new_tasks(database, tmp_path):
    assert main(["label", "disable-user", "--db", str(database), "bob"]) == 0
    tasks = tmp_path / "more.jsonl"
    tasks.write_text(json.dumps({"prompt": "new", "responses": ["a", "b"]}) + "\n")
    assert main(["label", "load", "--db", str(database), "--responses", str(tasks)]) == 0
    connection = db.connect(database)
    (owner,) = connection.execute("SELECT u.username FROM assignments a JOIN users u ON u.id = a.user_id "
                                  "WHERE a.task_id = (SELECT MAX(id) FROM tasks)").fetchone()
    connection.close()
    assert owner == "alice"


@pytest.mark.parametrize("command", [
    ["serve"], ["load", "--responses", "x.jsonl"], ["audit"], ["agreement"], ["export", "--output", "out"],
    ["disable-user", "bob"], ["enable-user", "bob"], ["reset-password", "bob"],
])
def test_every_command_but_add_user_refuses_a_missing_database(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    missing = tmp_path / "labels-typo.db"
    assert main(["label", command[0], "--db", str(missing), *command[1:]]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"rlhf: error: {missing}: no such database")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
