"""The labeling app: answers, assignment, agreement, export, and every route of the web app."""

import json
import os
import re
import sqlite3

import pytest

from label_helpers import PASSWORD, csrf_token, login, make_app
from rlhf.cli import main
from rlhf.data.readers import read_comparisons, read_demonstrations
from rlhf.data.records import Comparison, DataError
from rlhf.label import db
from rlhf.label.answers import AnswerError, agreement, pair_agreement, ranks_from_order, validate_answer
from rlhf.label.load import assign, demonstration_tasks, load_tasks, read_ranking_tasks

HOSTILE_PROMPT = "<script>alert('x')</script> & \"quotes\" '); DROP TABLE tasks; --"


# ---- answers -------------------------------------------------------------------------------------

def test_validate_ranking_answer_keeps_order_ratings_and_sorted_flags():
    answer = validate_answer("ranking", 3, {"order": [2, 0, 1], "ratings": [5, 2, 7],
                                            "flags": [["hallucination"], [], ["harmful_advice", "hallucination"]]})
    assert answer == {"order": [2, 0, 1], "ratings": [5, 2, 7],
                      "flags": [["hallucination"], [], ["hallucination", "harmful_advice"]]}


@pytest.mark.parametrize("answer, field", [
    ({"order": [0, 0, 1], "ratings": [1, 1, 1]}, "order"),        # a response twice, one missing
    ({"order": [0, 1], "ratings": [1, 1, 1]}, "order"),           # K = 3 needs three
    ({"order": [0, 1, 2], "ratings": [1, 8, 1]}, "ratings[1]"),   # outside 1–7
    ({"order": [0, 1, 2], "ratings": [1, True, 1]}, "ratings[1]"),
    ({"order": [0, 1, 2], "ratings": [1, 2]}, "ratings"),
    ({"order": [0, 1, 2], "ratings": [1, 2, 3], "flags": [[], ["rude"], []]}, "flags[1]"),
    ({"skip": "  "}, "skip"),
])
def test_validate_ranking_answer_names_the_bad_field(answer, field):
    with pytest.raises(AnswerError) as error:
        validate_answer("ranking", 3, answer)
    assert error.value.field == field


def test_validate_demonstration_answer():
    assert validate_answer("demonstration", 0, {"response": "  Paris.\n"}) == {"response": "Paris."}
    with pytest.raises(AnswerError, match="response: write a response"):
        validate_answer("demonstration", 0, {"response": " \n"})
    with pytest.raises(AnswerError, match="longer than"):
        validate_answer("demonstration", 0, {"response": "x" * 20_001})


def test_ranks_from_order():
    assert ranks_from_order([2, 0, 1]) == [2, 3, 1]  # response 2 is best, response 1 worst


def test_pair_agreement_by_hand():
    # a: 0 > 1 > 2; b: 0 > 2 > 1. Pairs (0,1) and (0,2) agree, (1,2) does not.
    assert pair_agreement([1, 2, 3], [1, 3, 2]) == (2, 3)
    assert pair_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == (0, 6)


def _ranking(task_id, labeler, ranks):
    return Comparison([{"role": "user", "content": "p"}], [f"r{k}" for k in range(len(ranks))], ranks,
                      metadata={"task_id": task_id, "labeler": labeler})


def test_agreement_by_hand():
    comparisons = [
        _ranking(1, "ann", [1, 2, 3]), _ranking(1, "bob", [1, 3, 2]), _ranking(1, "cat", [1, 2, 3]),
        _ranking(2, "ann", [1, 2]), _ranking(2, "bob", [2, 1]),
        _ranking(3, "cat", [1, 2]),  # one labeler only: not an agreement task
    ]
    result = agreement(comparisons)
    # task 1: ann-bob 2/3, ann-cat 3/3, bob-cat 2/3 → 7/9; task 2: ann-bob 0/1 → overall 7/10
    assert result["overall"] == pytest.approx(0.7)
    assert result["pairs"] == 10 and result["tasks"] == 2
    # ann: (2 + 3 + 0) / (3 + 3 + 1); bob: (2 + 2 + 0) / 7; cat: (3 + 2) / 6
    assert result["per_labeler"]["ann"] == {"agreement": pytest.approx(5 / 7), "pairs": 7, "tasks": 2}
    assert result["per_labeler"]["bob"]["agreement"] == pytest.approx(4 / 7)
    assert result["per_labeler"]["cat"] == {"agreement": pytest.approx(5 / 6), "pairs": 6, "tasks": 1}
    # standard error over the two tasks' rates 7/9 and 0: stdev / sqrt(2)
    assert result["standard_error"] == pytest.approx(abs(7 / 9 - 0) / 2 ** 0.5 / 2 ** 0.5)


# ---- assignment and loading ----------------------------------------------------------------------

def test_assign_balances_load_and_overlaps_the_requested_fraction():
    assignees = assign(10, [1, 2, 3], {3: 4}, overlap=0.3, replicas=2, seed=0)
    assert sum(len(a) == 2 for a in assignees) == 3
    assert all(len(set(a)) == len(a) for a in assignees)
    totals = {user: sum(user in a for a in assignees) + (4 if user == 3 else 0) for user in (1, 2, 3)}
    assert max(totals.values()) - min(totals.values()) <= 1  # the loaded labeler got fewer new tasks


def test_assign_errors():
    with pytest.raises(DataError, match="no labelers"):
        assign(3, [], {}, 0.0, 2, 0)
    with pytest.raises(DataError, match="replicas"):
        assign(3, [1, 2], {}, 0.5, 3, 0)
    with pytest.raises(DataError, match="overlap"):
        assign(3, [1, 2], {}, 1.5, 2, 0)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "responses": ["only one"]}, "field 'responses' must list at least 2"),
    ({"prompt": "q", "responses": ["a", " "]}, r"field 'responses\[1\]' is empty"),
    ({"prompt": "q", "responses": ["a", {"model": "m"}]}, r"field 'responses\[1\]' must be a string or an object"),
    ({"responses": ["a", "b"]}, "not a demonstration"),
    ({"prompt": "q", "responses": ["same", "other", {"text": " same ", "model": "m"}]},
     r"field 'responses\[2\]' repeats the text of 'responses\[0\]'"),
])
def test_ranking_task_file_errors_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "responses": ["a", "b"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"tasks.jsonl:2: .*{message}"):
        read_ranking_tasks(path)


# ---- the web app ---------------------------------------------------------------------------------

@pytest.fixture
def database(tmp_path):
    path = tmp_path / "labels.db"
    connection = db.initialise(path)
    for name in ("alice", "bob"):
        db.add_user(connection, name, PASSWORD)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": HOSTILE_PROMPT, "user_id": "customer-1"}) + "\n")
    ranking = tmp_path / "ranking.jsonl"
    ranking.write_text("".join(json.dumps({"prompt": f"question {i}", "responses": [
        "first", "<img src=x onerror=alert(1)>", {"text": "third", "model": "ppo"}, "fourth"]}) + "\n"
        for i in range(2)))
    load_tasks(connection, read_ranking_tasks(ranking), overlap=1.0, replicas=2)  # each task: alice and bob
    load_tasks(connection, demonstration_tasks(prompts))  # one demonstration, to the least loaded
    connection.close()
    return path


@pytest.fixture
def app(database):
    return make_app(database)


def _assignments(database, username):
    connection = db.connect(database)
    user = connection.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()["id"]
    rows = db.user_assignments(connection, user)
    connection.close()
    return rows


def _submission_count(database) -> int:
    connection = sqlite3.connect(database)
    count = connection.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    connection.close()
    return count


def test_every_route_needs_a_session(app, database):
    client = app.test_client()
    for path in ("/", "/task/1"):
        response = client.get(path)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks/1").status_code == 401
    assert client.post("/api/tasks/1", json={"skip": "x"}).status_code == 401
    assert client.post("/task/1", data={"action": "skip", "skip_reason": "other"}).status_code == 302
    assert client.post("/logout").status_code == 302
    assert _submission_count(database) == 0


def test_login_checks_the_password_and_the_csrf_token(app):
    client = app.test_client()
    response = login(client, password="wrong password")
    assert response.status_code == 401 and b"wrong username or password" in response.data
    response = login(client, username="nobody")
    assert response.status_code == 401
    response = client.post("/login", data={"username": "alice", "password": PASSWORD})  # no token
    assert response.status_code == 400 and b"csrf_token" in response.data
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/api/tasks").status_code == 200


def test_login_never_redirects_off_site(app):
    client = app.test_client()
    response = client.post("/login?next=//evil.example/", data={
        "username": "alice", "password": PASSWORD, "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/"


def test_passwords_are_stored_with_a_slow_salted_hash(database):
    connection = db.connect(database)
    hashes = [row["password_hash"] for row in connection.execute("SELECT password_hash FROM users")]
    connection.close()
    assert all(h.startswith(("scrypt:", "pbkdf2:")) and PASSWORD not in h for h in hashes)
    assert hashes[0] != hashes[1]  # same password, different salts


def test_labeler_sees_only_their_own_tasks(app, database):
    client = app.test_client()
    login(client, "alice")
    mine = client.get("/api/tasks").get_json()
    bob_ids = {a["id"] for a in _assignments(database, "bob")}
    assert {t["id"] for t in mine["tasks"]}.isdisjoint(bob_ids)
    assert mine["progress"] == {"done": 0, "total": len(_assignments(database, "alice"))}
    token = csrf_token(client)
    for other in bob_ids:
        assert client.get(f"/task/{other}").status_code == 404
        assert client.get(f"/api/tasks/{other}").status_code == 404
        answer = {"order": [0, 1, 2, 3], "ratings": [1, 1, 1, 1]}
        assert client.post(f"/api/tasks/{other}", json=answer, headers={"X-CSRFToken": token}).status_code == 404
        assert client.post(f"/task/{other}", data={"csrf_token": token, "response": "x"}).status_code == 404
    assert client.get("/api/tasks/999999").status_code == 404
    assert _submission_count(database) == 0


def test_forged_or_missing_csrf_token_is_refused(app, database):
    client = app.test_client()
    login(client, "alice")
    task = _assignments(database, "alice")[0]["id"]
    answer = {"order": [0, 1, 2, 3], "ratings": [4, 4, 4, 4]}
    assert client.post(f"/api/tasks/{task}", json=answer).status_code == 400
    forged = client.post(f"/api/tasks/{task}", json=answer, headers={"X-CSRFToken": "forged." + "a" * 40})
    assert forged.status_code == 400 and "csrf_token" in forged.get_json()["error"]
    other = app.test_client()  # a valid token, but from somebody else's session
    login(other, "bob")
    stolen = csrf_token(other)
    assert client.post(f"/api/tasks/{task}", json=answer, headers={"X-CSRFToken": stolen}).status_code == 400
    assert _submission_count(database) == 0


def test_pages_escape_prompts_and_responses(app, database):
    client = app.test_client()
    login(client, "alice")
    for assignment in _assignments(database, "alice"):
        page = client.get(f"/task/{assignment['id']}").get_data(as_text=True)
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert" in page or "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "script-src" not in client.get("/").headers["Content-Security-Policy"]  # default-src 'self' covers it
    assert "default-src 'self'" in client.get("/").headers["Content-Security-Policy"]


def test_ranking_through_the_form_and_the_export(app, database, tmp_path):
    client = app.test_client()
    login(client, "alice")
    task = next(a for a in _assignments(database, "alice") if a["kind"] == "ranking")
    form = {"csrf_token": csrf_token(client), "action": "submit", "order": "2,0,3,1",
            "rating_0": "5", "rating_1": "1", "rating_2": "7", "rating_3": "3", "flag_1": ["harmful_advice"]}
    response = client.post(f"/task/{task['id']}", data=form)
    assert response.status_code == 302
    stored = client.get(f"/api/tasks/{task['id']}").get_json()
    assert stored["status"] == "submitted" and stored["revision"] == 1
    assert stored["answer"]["flags"] == [[], ["harmful_advice"], [], []]
    assert main(["label", "export", "--db", str(database), "--output", str(tmp_path / "out")]) == 0
    (comparison,) = read_comparisons(tmp_path / "out" / "comparisons.jsonl")
    assert comparison.ranks == [2, 4, 1, 3]  # order 2,0,3,1 best first
    assert comparison.responses[1] == "<img src=x onerror=alert(1)>"  # stored as typed, escaped only on pages
    assert comparison.metadata["labeler"] == "alice" and comparison.metadata["ratings"] == [5, 1, 7, 3]
    assert comparison.metadata["models"] == [None, None, "ppo", None]


def test_form_errors_name_the_field_and_store_nothing(app, database):
    client = app.test_client()
    login(client, "alice")
    task = next(a for a in _assignments(database, "alice") if a["kind"] == "ranking")
    form = {"csrf_token": csrf_token(client), "order": "0,1,2,3", "rating_0": "5", "rating_1": "5", "rating_2": "5"}
    response = client.post(f"/task/{task['id']}", data=form)
    assert response.status_code == 400 and "ratings[3]: rate response 4" in response.get_data(as_text=True)
    response = client.post(f"/task/{task['id']}", data=form | {"order": "0,1,1,3", "rating_3": "2"})
    assert response.status_code == 400 and "order: must list each" in response.get_data(as_text=True)
    response = client.post(f"/api/tasks/{task['id']}", data="not json", headers={"X-CSRFToken": form["csrf_token"]})
    assert response.status_code == 400 and response.get_json()["error"].startswith("body")
    assert _submission_count(database) == 0


def test_hostile_input_is_stored_verbatim(app, database, tmp_path):
    client = app.test_client()
    owner = next(name for name in ("alice", "bob")
                 if any(a["kind"] == "demonstration" for a in _assignments(database, name)))
    login(client, owner)
    task = next(a for a in _assignments(database, owner) if a["kind"] == "demonstration")
    text = "'); DELETE FROM submissions; -- <script>alert(1)</script> \" %s ? \\x00"
    response = client.post(f"/api/tasks/{task['id']}", json={"response": text},
                           headers={"X-CSRFToken": csrf_token(client)})
    assert response.status_code == 200
    page = client.get(f"/task/{task['id']}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert main(["label", "export", "--db", str(database), "--output", str(tmp_path / "out")]) == 0
    (demo,) = read_demonstrations(tmp_path / "out" / "demonstrations.jsonl")
    assert demo.response == text and demo.prompt[0]["content"] == HOSTILE_PROMPT
    assert demo.user_id == "customer-1" and demo.metadata["labeler"] == owner
    assert _submission_count(database) == 1


def test_huge_bodies_are_refused(app, database):
    client = app.test_client()
    login(client, "alice")
    task = _assignments(database, "alice")[0]["id"]
    response = client.post(f"/api/tasks/{task}", data=b"x" * (2 << 20), content_type="application/json",
                           headers={"X-CSRFToken": csrf_token(client)})
    assert response.status_code == 413
    assert _submission_count(database) == 0


def test_editing_keeps_history_and_exports_once(app, database, tmp_path):
    client = app.test_client()
    login(client, "bob")
    task = next(a for a in _assignments(database, "bob") if a["kind"] == "ranking")["id"]
    token = csrf_token(client)
    first = {"order": [0, 1, 2, 3], "ratings": [7, 5, 3, 1]}
    second = {"order": [3, 2, 1, 0], "ratings": [1, 3, 5, 7]}
    assert client.post(f"/api/tasks/{task}", json=first, headers={"X-CSRFToken": token}).get_json()["revision"] == 1
    assert client.post(f"/api/tasks/{task}", json=second, headers={"X-CSRFToken": token}).get_json()["revision"] == 2
    assert _submission_count(database) == 2  # the first answer is kept
    assert main(["label", "export", "--db", str(database), "--output", str(tmp_path / "out")]) == 0
    (comparison,) = read_comparisons(tmp_path / "out" / "comparisons.jsonl")
    assert comparison.ranks == [4, 3, 2, 1] and comparison.metadata["revision"] == 2


def test_skip_with_reason_is_recorded_and_left_out_of_the_export(app, database, tmp_path):
    client = app.test_client()
    login(client, "alice")
    task = _assignments(database, "alice")[0]["id"]
    response = client.post(f"/task/{task}", data={"csrf_token": csrf_token(client), "action": "skip",
                                                  "skip_reason": "unclear prompt", "skip_detail": "which language?"})
    assert response.status_code == 302
    assert client.get(f"/api/tasks/{task}").get_json()["answer"] == {"skip": "unclear prompt: which language?"}
    assert main(["label", "export", "--db", str(database), "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "comparisons.jsonl").read_text() == ""


def test_index_shows_progress_and_the_next_task(app, database):
    client = app.test_client()
    login(client, "alice")
    tasks = _assignments(database, "alice")
    page = client.get("/").get_data(as_text=True)
    assert f"0 / {len(tasks)} done" in page
    assert re.search(rf'id="next-task" href="/task/{tasks[0]["id"]}"', page)
    client.post(f"/api/tasks/{tasks[0]['id']}", json={"skip": "other"}, headers={"X-CSRFToken": csrf_token(client)})
    page = client.get("/").get_data(as_text=True)
    assert f"1 / {len(tasks)} done" in page
    assert client.post("/logout", data={"csrf_token": csrf_token(client)}).status_code == 302
    assert client.get("/api/tasks").status_code == 401


# ---- the command line ----------------------------------------------------------------------------

def test_cli_add_user_load_and_agreement(tmp_path, monkeypatch, capsys):
    database = str(tmp_path / "labels.db")
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    for name in ("ann", "ben", "cy"):
        assert main(["label", "add-user", "--db", database, name]) == 0
    assert main(["label", "add-user", "--db", database, "ann"]) == 2
    assert "user 'ann' already exists" in capsys.readouterr().err
    assert main(["label", "agreement", "--db", database]) == 2
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"q{i}", "responses": ["a", "b", "c"]}) + "\n" for i in range(4)))
    assert main(["label", "load", "--db", database, "--responses", str(tasks), "--overlap", "0.5",
                 "--replicas", "3"]) == 0
    connection = db.connect(database)
    per_task = [n for (n,) in connection.execute("SELECT COUNT(*) FROM assignments GROUP BY task_id")]
    assert sorted(per_task) == [1, 1, 3, 3]
    for user in db.labelers(connection):  # everyone ranks a > b > c, except cy who ranks c first
        ranks = [1, 2, 3] if user["username"] != "cy" else [2, 3, 1]
        for assignment in db.user_assignments(connection, user["id"]):
            order = sorted(range(3), key=lambda k: ranks[k])
            answer = {"order": order, "ratings": [4, 4, 4], "flags": [[]] * 3}
            db.submit(connection, user["id"], assignment["id"], answer)
    connection.close()
    capsys.readouterr()
    assert main(["label", "agreement", "--db", database]) == 0
    out = capsys.readouterr().out
    # on each shared task: ann-ben 3/3, ann-cy 1/3, ben-cy 1/3 → 5/9
    assert "overall: 55.6" in out and "ann: 66.7 % (12 pairs, 2 tasks)" in out and "cy: 33.3 %" in out
    assert main(["label", "load", "--db", database, "--prompts", str(tasks)]) == 2  # ranking without responses


def test_load_samples_k_responses_spread_over_the_models(tmp_path, tiny_path, monkeypatch, capsys):
    database = str(tmp_path / "labels.db")
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    main(["label", "add-user", "--db", database, "ann"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n{"prompt": "name a colour", "category": "brainstorm"}\n')
    assert main(["label", "load", "--db", database, "--prompts", str(prompts), "--model", "tiny",
                 "--model", str(tiny_path), "-k", "3", "--max-new-tokens", "8"]) == 0
    connection = db.connect(database)
    tasks = db.user_assignments(connection, db.labelers(connection)[0]["id"])
    connection.close()
    assert [t["kind"] for t in tasks] == ["ranking", "ranking"] and tasks[1]["category"] == "brainstorm"
    for task in tasks:  # samples 0 and 2 from the first model, sample 1 from the second, shuffled
        assert sorted(r["model"] for r in task["responses"]) == sorted(["tiny", "tiny", str(tiny_path)])
        assert all(r["text"].strip() for r in task["responses"])


def test_sampled_repeats_are_left_out_so_that_the_export_reads_back(tmp_path, monkeypatch, caplog):
    """Two models giving the same text would make one text hold two ranks, which no reader accepts."""
    import rlhf.generate
    import rlhf.models
    from rlhf.label.load import sample_ranking_tasks

    answers = {"a": ["same", "distinct a", "twin"], "b": ["same ", "distinct b", "twin"]}
    monkeypatch.setattr(rlhf.models, "load_causal_lm", lambda name, **kwargs: name)
    monkeypatch.setattr(rlhf.models, "load_tokenizer", lambda name: name)
    monkeypatch.setattr(rlhf.generate, "sampling_decoder", lambda model: model)
    monkeypatch.setattr(rlhf.generate, "generate", lambda name, prompts, *a, **k: answers[name])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    tasks = sample_ranking_tasks(prompts, ["a", "b"], 2, 8, 0.7, 0)
    assert [t["prompt"][0]["content"] for t in tasks] == ["question 1"]  # 0 and 2: one distinct text only
    assert sorted(r["text"] for r in tasks[0]["responses"]) == ["distinct a", "distinct b"]
    assert "2 sampled response(s) repeated" in caplog.text


@pytest.mark.parametrize("content", [b"", b"not sqlite at all\n", b'{"prompt": "a jsonl file"}\n', "sqlite"])
@pytest.mark.parametrize("action", [["export", "--output", "OUT"], ["agreement"], ["add-user", "ann"]])
def test_a_file_that_is_not_a_labeling_database_is_left_as_it_is(tmp_path, monkeypatch, capsys, content, action):
    path = tmp_path / "labels.db"
    if content == "sqlite":  # somebody's own SQLite database
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE notes (text)")
        connection.commit()
        connection.close()
    else:
        path.write_bytes(content)
    os.chmod(path, 0o644)
    before = path.read_bytes()
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    argv = ["label", action[0], "--db", str(path), *[str(tmp_path / a) if a == "OUT" else a for a in action[1:]]]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "not an rlhf labeling database" in error and "nothing was changed" in error
    assert path.read_bytes() == before and os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.db"]


def test_a_response_model_must_be_a_name(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"prompt": "q", "responses": [{"text": "a", "model": ["m1"]}, "b"]}) + "\n")
    with pytest.raises(DataError, match=r"tasks.jsonl:1: field 'responses\[0\]\.model' must be a string"):
        read_ranking_tasks(path)
