"""The labeling app behind a real server on loopback: many labelers at once, and a real browser."""

import json
import os
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import waitress

from rlhf.cli import main
from rlhf.data.readers import read_comparisons
from rlhf.label import db
from rlhf.label.app import create_app
from rlhf.label.load import load_tasks, read_ranking_tasks

PASSWORD = "correct horse"


@pytest.fixture
def serve():
    """Start the app on a free loopback port in this process; yields a function db → base URL."""
    servers = []

    def start(database: Path) -> str:
        server = waitress.create_server(create_app(database), host="127.0.0.1", port=0, threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    for server in servers:
        server.close()


def _make_database(path: Path, labelers: list[str], tasks_file: Path, overlap: float, replicas: int) -> None:
    connection = db.initialise(path)
    for name in labelers:
        db.add_user(connection, name, PASSWORD)
    load_tasks(connection, read_ranking_tasks(tasks_file), overlap=overlap, replicas=replicas)
    connection.close()


def _session(base: str, username: str) -> tuple[requests.Session, str]:
    session = requests.Session()
    token = session.get(f"{base}/api/csrf", timeout=30).json()["csrf_token"]
    response = session.post(f"{base}/login", data={"username": username, "password": PASSWORD, "csrf_token": token},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 302, response.text
    return session, session.get(f"{base}/api/csrf", timeout=30).json()["csrf_token"]


def test_many_labelers_submitting_at_once_store_every_answer_exactly_once(tmp_path, serve):
    labelers = [f"labeler{i:02d}" for i in range(16)]
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps({"prompt": f"question {i}", "responses": [f"r{k}" for k in range(4)]})
                                  + "\n" for i in range(100)))
    database = tmp_path / "labels.db"
    _make_database(database, labelers, tasks_file, overlap=0.3, replicas=3)
    base = serve(database)
    start = threading.Barrier(len(labelers))
    expected, posted, busy, failures = {}, [0], [0], []
    lock = threading.Lock()

    def label(name: str, seat: int) -> None:
        session, token = _session(base, name)
        tasks = session.get(f"{base}/api/tasks", timeout=30).json()["tasks"]
        start.wait()
        for n, task in enumerate(tasks):
            order = [(seat + n + k) % 4 for k in range(4)]
            answers = [{"order": order, "ratings": [1 + (seat + k) % 7 for k in range(4)]}]
            if n % 3 == 0:
                answers.append(answers[0])  # a retry of the same answer
            if n % 5 == 0:
                answers.append({"order": order[::-1], "ratings": [4, 4, 4, 4]})  # an edit
            for answer in answers:
                for _ in range(5):  # a client honours 503's Retry-After: nothing was stored
                    response = session.post(f"{base}/api/tasks/{task['id']}", json=answer,
                                            headers={"X-CSRFToken": token}, timeout=60)
                    if response.status_code != 503:
                        break
                    with lock:
                        busy[0] += 1
                    time.sleep(float(response.headers["Retry-After"]))
                with lock:
                    if response.status_code != 200:
                        failures.append((name, task["id"], response.status_code, response.text))
                    posted[0] += 1
            expected[(task["task_id"], name)] = answers[-1]["order"]

    began = time.perf_counter()
    threads = [threading.Thread(target=label, args=(name, seat)) for seat, name in enumerate(labelers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    assert not failures

    connection = db.connect(database)
    stored = connection.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    assignments = connection.execute("SELECT COUNT(*) FROM assignments").fetchone()[0]
    connection.close()
    assert main(["label", "export", "--db", str(database), "--output", str(tmp_path / "out")]) == 0
    exported = read_comparisons(tmp_path / "out" / "comparisons.jsonl")
    keys = [(c.metadata["task_id"], c.metadata["labeler"]) for c in exported]
    lost = len(set(expected) - set(keys))
    duplicated = len(keys) - len(set(keys))
    print(f"\nconcurrency: {len(labelers)} labelers, {posted[0]} submissions in {seconds:.1f} s "
          f"({posted[0] / seconds:.0f}/s, {busy[0]} answered 503 and retried), {stored} stored, "
          f"{len(exported)} exported for {assignments} assignments, {lost} lost, {duplicated} duplicated")
    assert stored == posted[0]  # every submission kept, retries and edits included
    assert len(exported) == assignments == len(expected) and lost == 0 and duplicated == 0
    for comparison in exported:  # the export holds each labeler's last answer
        order = expected[(comparison.metadata["task_id"], comparison.metadata["labeler"])]
        assert [comparison.ranks.index(position) for position in range(1, 5)] == order
    # and the export trains a reward model as it is
    assert main(["reward", f"data=[{tmp_path / 'out' / 'comparisons.jsonl'}]", "model=tiny", "max_steps=2",
                 "batch_size=4", f"output_dir={tmp_path / 'reward'}"]) == 0
    assert (tmp_path / "reward" / "model.safetensors").exists()


def _chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium); browser test not run")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    return browser


def test_browser_login_rank_four_responses_and_export(tmp_path, serve):
    browser_path = _chromium()  # skips first where there is no browser or no playwright
    from playwright.sync_api import sync_playwright

    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text(json.dumps({"prompt": "Which answer is best?",
                                      "responses": ["alpha", "beta", "gamma", "delta"]}) + "\n")
    database = tmp_path / "labels.db"
    _make_database(database, ["alice"], tasks_file, overlap=0.0, replicas=2)
    base = serve(database)
    shot = Path(os.environ.get("RLHF_SCREENSHOT_DIR", tmp_path)) / "label-ranking.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(f"{base}/")
        assert page.url.startswith(f"{base}/login")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{base}/")
        assert "0 / 1 done" in page.inner_text("header")
        page.click("#next-task")
        page.wait_for_selector("#ranking")

        def item(text):
            return page.locator("li.response", has_text=text)

        item("delta").focus()  # keyboard: delta to the top
        for _ in range(3):
            page.keyboard.press("Alt+ArrowUp")
        assert page.input_value("#order") == "3,0,1,2"
        box = item("gamma").bounding_box()  # drag: beta below gamma
        item("beta").drag_to(item("gamma"), target_position={"x": 20, "y": box["height"] - 10})
        assert page.input_value("#order") == "3,0,2,1"
        for k, rating in enumerate([6, 2, 4, 7]):  # ratings of alpha, beta, gamma, delta
            page.check(f"input[name=rating_{k}][value='{rating}']")
        page.check("input[name=flag_1][value=hallucination]")
        page.screenshot(path=str(shot), full_page=True)
        item("alpha").focus()
        page.keyboard.press("Control+Enter")
        page.wait_for_url(f"{base}/")
        assert "All 1 tasks are done" in page.inner_text("main")
        browser.close()
    print(f"\nscreenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert main(["label", "export", "--db", str(database), "--output", str(tmp_path / "out")]) == 0
    (comparison,) = read_comparisons(tmp_path / "out" / "comparisons.jsonl")
    assert comparison.responses == ["alpha", "beta", "gamma", "delta"]
    assert comparison.ranks == [2, 4, 3, 1]  # delta, alpha, gamma, beta
    assert comparison.metadata["ratings"] == [6, 2, 4, 7]
    assert comparison.metadata["flags"] == [[], ["hallucination"], [], []]


def test_cli_serve_answers_on_its_port(tmp_path, monkeypatch):
    import socket
    import subprocess

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = tmp_path / "labels.db"
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    monkeypatch.delenv("RLHF_LABEL_SECRET_KEY", raising=False)
    assert main(["label", "add-user", "--db", str(database), "alice"]) == 0  # serve never creates a database
    server = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "label", "serve", "--db", str(database),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                response = requests.get(f"http://127.0.0.1:{port}/", timeout=5, allow_redirects=False)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the server never answered: " + server.stdout.read1().decode())
        assert response.status_code == 302 and response.headers["Location"].startswith("/login")
        assert "csrf_token" in requests.get(f"http://127.0.0.1:{port}/login", timeout=5).text
        key = Path(f"{database}.key")
        assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes().strip() not in database.read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_writers_of_one_process_wait_their_turn_on_its_queue_and_time_out_as_busy(tmp_path):
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    holder = db.connect(first)
    patient, impatient = db.connect(first, busy_timeout_s=5.0), db.connect(first, busy_timeout_s=0.2)
    other_file = db.connect(second, busy_timeout_s=0.2)
    holder.execute("CREATE TABLE t (x INTEGER)")
    done = threading.Event()

    def write_after_the_holder() -> None:
        with db.transaction(patient):
            patient.execute("INSERT INTO t VALUES (2)")
        done.set()

    with db.transaction(holder):
        holder.execute("INSERT INTO t VALUES (1)")
        waiter = threading.Thread(target=write_after_the_holder)
        waiter.start()
        with pytest.raises(sqlite3.OperationalError) as busy:
            with db.transaction(impatient):
                pass
        assert db.is_busy(busy.value)  # the app's 503
        with db.transaction(other_file):  # another file's queue is its own
            other_file.execute("CREATE TABLE u (y INTEGER)")
        assert not done.is_set()  # still waiting for its turn
    waiter.join(timeout=10)
    assert done.is_set()
    assert [row[0] for row in holder.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    with db.transaction(impatient):  # the queue is free again once every writer committed
        impatient.execute("INSERT INTO t VALUES (3)")
    for connection in (holder, patient, impatient, other_file):
        connection.close()


def test_the_writer_queue_serves_writers_in_the_order_they_came_and_drops_one_that_gave_up():
    queue = db.WriterQueue()
    assert queue.acquire(timeout=0)
    served = []

    def writer(seat: int) -> None:
        assert queue.acquire(timeout=10)
        served.append(seat)
        queue.release()

    threads = []
    for seat in range(6):
        threads.append(threading.Thread(target=writer, args=(seat,)))
        threads[-1].start()
        while len(queue._waiting) < seat + 1:  # in line before the next one comes
            time.sleep(0.001)
    assert not queue.acquire(timeout=0.05)  # gave up: out of the line, not handed the lock later
    assert len(queue._waiting) == 6
    queue.release()
    for thread in threads:
        thread.join(timeout=10)
    assert served == [0, 1, 2, 3, 4, 5]
    assert queue.acquire(timeout=0)  # free again
