"""The labeling app under attack: stolen cookies, open redirects, password guessing, copied
databases, cookies over HTTP, malformed bodies and a busy database. Each test replays the attack
and checks the server's answer (status, headers, what was stored)."""

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from werkzeug.security import generate_password_hash

from label_helpers import PASSWORD, csrf_token, login, make_app
from rlhf.cli import main
from rlhf.data.records import DataError
from rlhf.label import db
from rlhf.label.app import create_app
from rlhf.label.load import demonstration_tasks, load_tasks, read_ranking_tasks
from rlhf.label.security import (
    SECRET_KEY_VARIABLE,
    LoginThrottle,
    SessionPolicy,
    is_loopback,
    key_file,
    retry_after_header,
    safe_next,
)


def _make_database(path):
    """alice and bob (labelers) share two ranking tasks of K = 3; alice also has a demonstration."""
    connection = db.initialise(path)
    for name in ("alice", "bob"):
        db.add_user(connection, name, PASSWORD)
    ranking = path.parent / "ranking.jsonl"
    ranking.write_text("".join(json.dumps({"prompt": f"q{i}", "responses": ["a", "b", "c"]}) + "\n" for i in range(2)))
    load_tasks(connection, read_ranking_tasks(ranking), overlap=1.0, replicas=2)
    prompts = path.parent / "prompts.jsonl"
    prompts.write_text('{"prompt": "write something"}\n')
    load_tasks(connection, demonstration_tasks(prompts))  # the least loaded: alice (ties go to the first)
    connection.close()
    return path


@pytest.fixture
def database(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_KEY_VARIABLE, raising=False)
    return _make_database(tmp_path / "labels.db")


@pytest.fixture
def app(database):
    return make_app(database)


@pytest.fixture(scope="module")
def shared():
    """One database and app for the many attacks that must store nothing (fast: one set-up)."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        patch.delenv(SECRET_KEY_VARIABLE, raising=False)
        path = _make_database(Path(folder) / "labels.db")
        yield path, make_app(path)


@pytest.fixture(scope="module")
def alice(shared):
    """alice's client on the shared app, logged in once; yields (client, CSRF token, database), and
    checks at the end that none of the attacks stored anything."""
    path, app = shared
    client = app.test_client()
    assert login(client).status_code == 302
    yield client, csrf_token(client), path
    assert _submission_count(path) == 0


def _task(database, username="alice", kind="ranking") -> int:
    connection = db.connect(database)
    user = db.user_by_name(connection, username)["id"]
    task = next(a["id"] for a in db.user_assignments(connection, user) if a["kind"] == kind)
    connection.close()
    return task


def _rows(database, query: str, *parameters) -> list[tuple]:
    connection = sqlite3.connect(database)
    rows = connection.execute(query, parameters).fetchall()
    connection.close()
    return rows


def _submission_count(database) -> int:
    return _rows(database, "SELECT COUNT(*) FROM submissions")[0][0]


def _events(database) -> list[str]:
    return [event for (event,) in _rows(database, "SELECT event FROM audit ORDER BY id")]


GOOD_ANSWER = {"order": [2, 0, 1], "ratings": [4, 5, 6]}


# ---- sessions ------------------------------------------------------------------------------------

def test_a_cookie_saved_before_logout_is_dead_after_it(app, database):
    client = app.test_client()
    assert login(client).status_code == 302
    saved = client.get_cookie("session").value
    token = csrf_token(client)
    thief = app.test_client()
    thief.set_cookie("session", saved)
    assert thief.get("/api/tasks").status_code == 200  # the replay works while the session lives
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    thief.set_cookie("session", saved)
    assert thief.get("/api/tasks").status_code == 401
    response = thief.post(f"/api/tasks/{_task(database)}", json=GOOD_ANSWER, headers={"X-CSRFToken": token})
    assert response.status_code == 401 and response.get_json() == {"error": "log in first"}
    assert _submission_count(database) == 0
    assert _rows(database, "SELECT COUNT(*) FROM sessions")[0][0] == 0
    assert _events(database) == ["login", "logout"]


def test_the_cookie_holds_only_a_random_token_whose_hash_is_stored(app, database):
    client = app.test_client()
    login(client)
    csrf_token(client)  # login starts a fresh cookie; the page's first CSRF token adds its nonce
    cookie = client.get_cookie("session")
    content = app.session_interface.get_signing_serializer(app).loads(cookie.value)
    assert set(content) == {"sid", "csrf_token"}  # no user id, no name: nothing to edit or mint
    assert cookie.expires is None  # a browser-session cookie; the server decides when it ends
    ((stored, user_id),) = _rows(database, "SELECT token_hash, user_id FROM sessions")
    assert stored == hashlib.sha256(content["sid"].encode()).hexdigest() and content["sid"] not in stored
    assert user_id == 1 and len(content["sid"]) >= 40
    login(client, "bob")  # a second login in the same browser ends the first session
    assert [user for (user,) in _rows(database, "SELECT user_id FROM sessions")] == [2]


def test_sessions_end_when_idle_and_after_the_absolute_lifetime(app, database):
    client = app.test_client()

    def age(column: str, seconds: float) -> None:
        connection = sqlite3.connect(database)
        connection.execute(f"UPDATE sessions SET {column} = ?", (time.time() - seconds,))
        connection.commit()
        connection.close()

    login(client)
    age("last_seen", 600)  # 10 minutes idle of the 2 h allowed: still in, and the visit is recorded
    assert client.get("/api/tasks").status_code == 200
    assert time.time() - _rows(database, "SELECT last_seen FROM sessions")[0][0] < 5
    age("last_seen", 2 * 3600 + 1)
    assert client.get("/api/tasks").status_code == 401
    login(client)
    age("created_at", 12 * 3600 - 60)  # busy all along: requests do not extend the 12 h
    assert client.get("/api/tasks").status_code == 200
    age("created_at", 12 * 3600 + 1)
    assert client.get("/api/tasks").status_code == 401
    assert _rows(database, "SELECT COUNT(*) FROM sessions")[0][0] == 0


def test_session_timeouts_are_configurable_and_checked(database):
    app = make_app(database, sessions=SessionPolicy(idle_timeout_s=60, absolute_timeout_s=120))
    client = app.test_client()
    login(client)
    connection = sqlite3.connect(database)
    connection.execute("UPDATE sessions SET last_seen = ?", (time.time() - 61,))
    connection.commit()
    connection.close()
    assert client.get("/api/tasks").status_code == 401
    with pytest.raises(DataError, match="session lifetime: must be at least the idle timeout"):
        SessionPolicy(idle_timeout_s=3600, absolute_timeout_s=60)
    with pytest.raises(DataError, match="idle timeout: must be positive"):
        SessionPolicy(idle_timeout_s=0)


# ---- redirects after login -----------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "?next=/%09/evil.example", "?next=/%5Cevil.example", "?next=/\\evil.example", "?next=//evil.example",
    "?next=https://evil.example", "?next=/%2F%2Fevil.example", "?next=%2F%2Fevil.example", "?next=///evil.example",
    "?next=/%0D%0ALocation:%20//evil.example", "?next=javascript:alert(1)", "?next=%E3%80%82evil.example",
    "?next=/%E2%80%8B/evil.example", "?next=/task/1%2F%2Fevil.example",
])
def test_login_never_redirects_off_site(shared, query):
    response = login(shared[1].test_client(), query=query)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_login_returns_to_a_page_of_this_site(shared):
    assert login(shared[1].test_client(), query="?next=/task/3").headers["Location"] == "/task/3"
    assert safe_next("/admin") == "/admin" and safe_next(None) == "/" and safe_next("/a" * 200) == "/"


# ---- password guessing ---------------------------------------------------------------------------

def test_password_guessing_is_refused_with_429_and_retry_after(app, database):
    client = app.test_client()
    codes = [login(client, password=f"guess {n}").status_code for n in range(10)]
    assert codes == [401] * 5 + [429] * 5  # the default: 5 free failures, then a 2 s back-off
    refused = login(client)  # even the right password is not checked while throttled
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert b"too many failed logins" in refused.data
    assert "sid" not in app.session_interface.get_signing_serializer(app).loads(client.get_cookie("session").value)
    assert _events(database) == ["login_failed"] * 5 + ["login_throttled"] * 6


def test_back_off_by_hand():
    throttle = LoginThrottle(window_s=60, base_delay_s=2)
    assert throttle.wait_s([10.0, 11.0], free=3, now=11.5) == 0  # two failures of three free
    assert throttle.wait_s([10.0, 11.0, 12.0], free=3, now=12.5) == pytest.approx(1.5)  # 2 s after the last
    assert throttle.wait_s([10.0, 11.0, 12.0, 13.0], free=3, now=13.0) == pytest.approx(4.0)  # doubled
    assert throttle.wait_s([float(t) for t in range(20)], free=3, now=19.0) == pytest.approx(60.0)  # capped
    assert throttle.wait_s([10.0, 11.0, 12.0], free=3, now=20.0) == 0
    assert retry_after_header(0.2) == "1" and retry_after_header(1.5) == "2"
    with pytest.raises(DataError, match="per_account"):
        LoginThrottle(per_account=0)


def test_the_right_password_works_again_after_the_window(database):
    app = make_app(database, throttle=LoginThrottle(window_s=2.0, per_account=3, per_address=100, base_delay_s=2.0))
    client = app.test_client()
    assert [login(client, password="wrong password").status_code for _ in range(3)] == [401] * 3
    response = login(client)
    assert response.status_code == 429 and response.headers["Retry-After"] in ("1", "2")
    time.sleep(2.1)
    assert login(client).status_code == 302


def test_guessing_across_accounts_is_throttled_per_client_address(database):
    app = make_app(database, throttle=LoginThrottle(window_s=60, per_account=100, per_address=3, base_delay_s=60))
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "10.0.0.1"
    assert [login(attacker, name, "wrong password").status_code for name in ("alice", "bob", "carol")] == [401] * 3
    assert login(attacker, "dave", "wrong password").status_code == 429
    spoofed = login(attacker, "bob", PASSWORD, headers={"X-Forwarded-For": "10.9.9.9"})
    assert spoofed.status_code == 429  # no --behind-proxy: X-Forwarded-For is not believed
    colleague = app.test_client()
    colleague.environ_base["REMOTE_ADDR"] = "10.0.0.2"
    assert login(colleague, "bob").status_code == 302
    assert _rows(database, "SELECT DISTINCT client_ip FROM audit WHERE event = 'login_throttled'") == [("10.0.0.1",)]


def test_a_guesser_elsewhere_cannot_lock_the_owner_out(database):
    """Failures against alice from one address hold back that address, not alice logging in from hers;
    a clean address that then fails is held back by alice's count too."""
    app = make_app(database, throttle=LoginThrottle(window_s=60, per_account=2, per_address=100, base_delay_s=60))
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "198.51.100.1"
    assert [login(guesser, "alice", f"guess {n}").status_code for n in range(4)] == [401, 401, 429, 429]
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "192.0.2.10"
    assert login(owner, "alice").status_code == 302
    second = app.test_client()
    second.environ_base["REMOTE_ADDR"] = "198.51.100.2"
    assert login(second, "bob", "wrong password").status_code == 401  # this address has failed now
    # alice's count restarted at her login: two more free failures, then this address is held back
    assert [login(second, "alice", f"again {n}").status_code for n in range(3)] == [401, 401, 429]


def test_guesses_sent_at_the_same_moment_count_against_the_limit(database):
    app = make_app(database, throttle=LoginThrottle(window_s=60, per_account=3, per_address=100, base_delay_s=60))
    codes, start = [], threading.Barrier(8)

    def guess(n: int) -> None:
        client = app.test_client()
        token = csrf_token(client)
        start.wait()
        response = client.post("/login", data={"username": "alice", "password": f"guess {n}", "csrf_token": token})
        codes.append(response.status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [401] * 3 + [429] * 5


def test_behind_a_proxy_the_forwarded_address_is_throttled_and_logged(database):
    app = make_app(database, behind_proxy=True,
                   throttle=LoginThrottle(window_s=60, per_account=100, per_address=1, base_delay_s=60))
    client = app.test_client()
    assert login(client, "alice", "wrong password", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 401
    assert login(client, "bob", "wrong password", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    assert login(client, "bob", PASSWORD, headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 302
    assert [ip for (ip,) in _rows(database, "SELECT client_ip FROM audit ORDER BY id")] == ["203.0.113.7"] * 2 + [
        "203.0.113.8"]


# ---- the signing key and the files ---------------------------------------------------------------

def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_database_and_key_are_created_readable_by_their_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_KEY_VARIABLE, raising=False)
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    path = tmp_path / "labels.db"
    previous = os.umask(0o022)  # the usual umask would make a plain file 0644
    try:
        assert main(["label", "add-user", "--db", str(path), "alice"]) == 0
        app = create_app(path)
        client = app.test_client()
        login(client)
        holder = db.connect(path)  # an open connection keeps -wal and -shm in place
        holder.execute("SELECT COUNT(*) FROM users").fetchone()
        files = [path, key_file(path), tmp_path / "labels.db-wal", tmp_path / "labels.db-shm"]
        assert {str(f.name): _mode(f) for f in files} == {f.name: 0o600 for f in files}
        key = key_file(path).read_text().strip()
        assert len(key) >= 32 and app.secret_key == key
        stored = b"".join(f.read_bytes() for f in files if f.suffix != ".key")
        assert key.encode() not in stored
        holder.close()
    finally:
        os.umask(previous)


def test_the_key_can_come_from_the_environment(database, monkeypatch):
    monkeypatch.setenv(SECRET_KEY_VARIABLE, "k" * 40)
    assert create_app(database).secret_key == "k" * 40
    assert not key_file(database).exists()
    monkeypatch.setenv(SECRET_KEY_VARIABLE, "short")
    with pytest.raises(DataError, match=f"{SECRET_KEY_VARIABLE}: at least 32 characters"):
        create_app(database)


def test_a_database_made_by_an_older_version_loses_its_stored_key(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_KEY_VARIABLE, raising=False)
    path = tmp_path / "old.db"
    key = "5ecret" + "0123456789abcdef" * 4
    old = sqlite3.connect(path)  # the old layout: the key in settings, no 'disabled' column, mode 0644
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript("""
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
                            is_admin INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);""")
    old.execute("INSERT INTO settings VALUES ('secret_key', ?)", (key,))
    old.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('alice', ?, 0)",
                (generate_password_hash(PASSWORD),))
    old.commit()
    old.close()
    os.chmod(path, 0o644)
    assert key.encode() in path.read_bytes()

    app = create_app(path)
    assert _mode(path) == 0o600
    assert app.secret_key != key and key_file(path).exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("old.db") and p.suffix != ".key"]
    assert all(key.encode() not in p.read_bytes() for p in leftovers)
    assert not _rows(path, "SELECT name FROM sqlite_master WHERE name = 'settings'")
    client = app.test_client()
    assert login(client).status_code == 302  # old accounts still log in


# ---- cookies over HTTPS --------------------------------------------------------------------------

def _login_cookie(app, **request_options) -> str:
    client = app.test_client()
    response = login(client, **request_options)
    assert response.status_code == 302, response.data
    return response.headers["Set-Cookie"]


def test_cookies_are_secure_with_the_flag_or_when_a_trusted_proxy_says_https(database):
    https = {"headers": {"X-Forwarded-Proto": "https", "Referer": "https://localhost/login"}}
    assert "Secure" not in _login_cookie(make_app(database))
    assert "Secure" not in _login_cookie(make_app(database), **https)  # not behind a proxy: header ignored
    assert "Secure" in _login_cookie(make_app(database, secure_cookies=True))
    assert "Secure" in _login_cookie(make_app(database, behind_proxy=True), **https)
    assert "Secure" not in _login_cookie(make_app(database, behind_proxy=True))


def test_loopback_hosts():
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.10", "labels.example.org")))


def test_serve_warns_on_a_shared_host_without_https(database, monkeypatch, caplog):
    import waitress

    served = []
    monkeypatch.setattr(waitress, "serve", lambda app, **options: served.append((app, options)))
    assert main(["label", "serve", "--db", str(database), "--host", "0.0.0.0", "--idle-timeout", "30"]) == 0
    assert "plain HTTP" in caplog.text and "--behind-proxy" in caplog.text
    app, options = served[-1]
    assert options["host"] == "0.0.0.0" and app.config["LABEL_SESSIONS"].idle_timeout_s == 30 * 60
    caplog.clear()
    assert main(["label", "serve", "--db", str(database), "--host", "0.0.0.0", "--behind-proxy"]) == 0
    assert main(["label", "serve", "--db", str(database)]) == 0
    assert "plain HTTP" not in caplog.text
    assert main(["label", "serve", "--db", str(database), "--idle-timeout", "600", "--session-lifetime", "1"]) == 2


# ---- malformed answers ---------------------------------------------------------------------------

RANKING_BODIES = [
    (b"[]", "body"), (b'"order"', "body"), (b"3", "body"), (b"null", "body"), (b"not json", "body"),
    (b'{"skip": "\xff\xfe"}', "body"),                                              # not UTF-8
    (b"[" * 50_000 + b"]" * 50_000, "body"),                                        # deeper than the parser goes
    (b'{"order": [[[[[0]]]]], "ratings": [1, 1, 1]}', "body"),                      # deeper than an answer needs
    (b'{"order": [' + b"9" * 5000 + b'], "ratings": [1, 1, 1]}', "body"),           # too many digits to convert
    (b'{"order": [0, "1", 2], "ratings": [1, 1, 1]}', "order"),                     # mixed types
    (b'{"order": true, "ratings": [1, 1, 1]}', "order"),
    (b'{"order": [false, true, 2], "ratings": [1, 1, 1]}', "order"),                # booleans are not 0 and 1
    (b'{"order": [0, 1, 2.0], "ratings": [1, 1, 1]}', "order"),
    (b'{"order": [0, 1, 99999999999999999999999], "ratings": [1, 1, 1]}', "order"),
    (b'{"order": {"0": 1}, "ratings": [1, 1, 1]}', "order"),
    (b'{"order": [0, 1, 2], "ratings": [1, true, 1]}', "ratings[1]"),
    (b'{"order": [0, 1, 2], "ratings": [1, 1, 1e400]}', "ratings[2]"),              # infinity
    (b'{"order": [0, 1, 2], "ratings": [1, 1, NaN]}', "ratings[2]"),
    (b'{"order": [0, 1, 2], "ratings": [1, "7", 1]}', "ratings[1]"),
    (b'{"order": [0, 1, 2], "ratings": [1, 1, 1], "flags": [[{"a": 1}], [], []]}', "flags[0]"),  # unhashable
    (b'{"order": [0, 1, 2], "ratings": [1, 1, 1], "flags": [[], [["x"]], []]}', "flags[1]"),
    (b'{"order": [0, 1, 2], "ratings": [1, 1, 1], "flags": [[], [], [7]]}', "flags[2]"),
    (b'{"order": [0, 1, 2], "ratings": [1, 1, 1], "flags": "hallucination"}', "flags"),
    (b'{"order": [0, 1, 2], "ratings": [1, 1, 1], "is_admin": true}', "is_admin"),  # unknown field
    (b'{"response": "text for a ranking"}', "response"),
    (b'{"skip": "\\ud800"}', "skip"),                                               # a lone surrogate
    (b'{"skip": ["other"]}', "skip"),
    (b'{"skip": "other", "order": [0, 1, 2]}', "order"),
    (b'{"\\udfff": 1}', "\\udfff"),
]


@pytest.mark.parametrize("body, field", RANKING_BODIES)
def test_malformed_ranking_answers_are_a_json_400_naming_the_field(alice, body, field):
    client, token, database = alice
    response = client.post(f"/api/tasks/{_task(database)}", data=body, content_type="application/json",
                           headers={"X-CSRFToken": token})
    assert response.status_code == 400 and response.is_json, response.data[:300]
    assert response.get_json()["field"] == field
    assert response.get_json()["error"].startswith(f"{field}: ")


@pytest.mark.parametrize("body, field", [
    (b'{"response": "\\ud83d alone"}', "response"), (b'{"response": 42}', "response"),
    (b'{"response": "fine", "order": [0]}', "order"), (b'{"response": "x' + b"y" * 20_001 + b'"}', "response"),
    (b'{"response": "\\u200b\\u2060 \\ufeff"}', "response"),  # only invisible characters: empty, as on read
])
def test_malformed_demonstrations_are_a_json_400_naming_the_field(alice, body, field):
    client, token, database = alice
    response = client.post(f"/api/tasks/{_task(database, kind='demonstration')}", data=body,
                           content_type="application/json", headers={"X-CSRFToken": token})
    assert response.status_code == 400 and response.get_json()["field"] == field


@pytest.mark.parametrize("task_id", ["١٢", "99999999999999999999999", "-1", "1_0", " 1", "1.0", "0x1", "²"])
def test_malformed_ids_are_a_400_naming_the_id(alice, task_id):
    client, token, _database = alice
    for response in (client.get(f"/api/tasks/{task_id}"),
                     client.post(f"/api/tasks/{task_id}", json=GOOD_ANSWER, headers={"X-CSRFToken": token})):
        assert response.status_code == 400 and response.get_json()["field"] == "id"
    page = client.get(f"/task/{task_id}")
    assert page.status_code == 400 and b"id: expected a number" in page.data


def test_the_form_takes_numbers_in_ascii_digits_only(app, database):
    client = app.test_client()
    login(client)
    form = {"csrf_token": csrf_token(client), "order": "0,1,2", "rating_0": "5", "rating_1": "5", "rating_2": "5"}
    task = _task(database)
    for change, field in (({"order": "٠,١,٢"}, "order"), ({"order": "0, 1,2"}, "order"),
                          ({"order": "0,1,1_0"}, "order"), ({"rating_1": "²"}, "ratings[1]"),
                          ({"rating_2": "٥"}, "ratings[2]"), ({"flag_0": "no_such_flag"}, "flags[0]")):
        response = client.post(f"/task/{task}", data=form | change)
        assert response.status_code == 400 and f"{field}: " in response.get_data(as_text=True), change
    assert client.post(f"/task/{task}", data=form).status_code == 302
    assert _submission_count(database) == 1


def test_a_json_body_needs_the_json_content_type(alice):
    client, token, database = alice
    response = client.post(f"/api/tasks/{_task(database)}", data=json.dumps(GOOD_ANSWER),
                           content_type="text/plain", headers={"X-CSRFToken": token})
    assert response.status_code == 400 and response.get_json()["field"] == "body"


# ---- every API error is JSON ---------------------------------------------------------------------

def test_every_api_error_is_json(app, database):
    client = app.test_client()
    assert client.get("/api/tasks").get_json() == {"error": "log in first"}
    login(client)
    bob_task = _task(database, "bob")
    alice_task = _task(database)
    token = csrf_token(client)
    cases = {
        404: client.get("/api/no/such/thing"),
        405: client.put(f"/api/tasks/{alice_task}", json=GOOD_ANSWER, headers={"X-CSRFToken": token}),
        413: client.post(f"/api/tasks/{alice_task}", data=b"{" + b" " * (2 << 20), content_type="application/json",
                         headers={"X-CSRFToken": token}),
        400: client.post(f"/api/tasks/{alice_task}", json=GOOD_ANSWER),  # no CSRF token
    }
    assert client.get(f"/api/tasks/{bob_task}").get_json() == {"error": "no such page or task"}
    for status, response in cases.items():
        assert response.status_code == status and response.is_json and "error" in response.get_json(), status
    assert "POST" in cases[405].headers["Allow"]
    assert cases[400].get_json()["field"] == "csrf_token"


def test_a_server_error_under_the_api_is_json_without_a_traceback(app, database):
    app.config["TESTING"] = False  # as served: exceptions become 500s instead of reaching the test
    client = app.test_client()
    login(client)
    task, token = _task(database), csrf_token(client)
    connection = sqlite3.connect(database)
    connection.execute("ALTER TABLE submissions RENAME TO moved_away")  # a genuine failure inside the request
    connection.commit()
    connection.close()
    response = client.post(f"/api/tasks/{task}", json=GOOD_ANSWER, headers={"X-CSRFToken": token})
    assert response.status_code == 500 and response.is_json
    assert response.get_json() == {"error": "internal error (the server log has the details)"}


def test_a_busy_database_answers_503_with_retry_after_in_seconds_not_half_a_minute(app, database):
    client = app.test_client()
    login(client)
    token, task = csrf_token(client), _task(database)
    impatient = make_app(database, busy_timeout_s=0.2).test_client()
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        began = time.perf_counter()
        response = client.post(f"/api/tasks/{task}", json=GOOD_ANSWER, headers={"X-CSRFToken": token})
        waited = time.perf_counter() - began
        fast = login(impatient, "bob")  # a page: the same 503, as HTML
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.get_json()["error"].startswith("the database is busy")
    assert 1.5 < waited < 6, waited  # the default 2 s busy timeout, not SQLite's 30 s
    assert fast.status_code == 503 and fast.headers["Retry-After"] == "2" and b"database is busy" in fast.data
    assert client.post(f"/api/tasks/{task}", json=GOOD_ANSWER, headers={"X-CSRFToken": token}).status_code == 200
