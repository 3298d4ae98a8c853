"""The labeling web application (Flask): log in, write demonstrations, rank responses.

Pages: ``/login``, ``/`` (my tasks and progress), ``/task/<id>`` (one assignment; POST submits).
JSON API for scripts and the page itself: ``GET /api/csrf``, ``GET /api/tasks``,
``GET|POST /api/tasks/<id>``. Every route but login and ``/api/csrf`` needs a session; every POST
needs the session's CSRF token (form field ``csrf_token`` or header ``X-CSRFToken``). A labeler
can read and answer only their own assignments: anyone else's is a 404, as if it did not exist.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from flask import Flask, abort, current_app, g, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf

from rlhf.label import db
from rlhf.label.answers import FLAGS, SKIP_REASONS, AnswerError, validate_answer

MAX_BODY_BYTES = 1 << 20
PUBLIC_ENDPOINTS = {"login", "static", "api_csrf"}


def create_app(database: str | Path, secure_cookies: bool = False) -> Flask:
    """The app for one database file (created if missing)."""
    connection = db.initialise(database)
    key = db.secret_key(connection)
    connection.close()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=key,
        DATABASE=str(database),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    _register_hooks(app)  # before CSRFProtect's own hook: no session is a 401, whatever the token
    CSRFProtect(app)
    app.jinja_env.globals.update(FLAGS=FLAGS, SKIP_REASONS=SKIP_REASONS, csrf_token=generate_csrf)
    _register_pages(app)
    _register_api(app)
    return app


def _connection():
    """One connection per request, closed when the request ends."""
    if "db" not in g:
        g.db = db.connect(current_app.config["DATABASE"])
    return g.db


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def require_login():
        if request.endpoint not in PUBLIC_ENDPOINTS and "user_id" not in session:
            if _wants_json():
                return jsonify(error="log in first"), 401
            return redirect(url_for("login", next=request.path))

    @app.teardown_appcontext
    def close_database(_exception):
        connection = g.pop("db", None)
        if connection is not None:
            connection.close()

    @app.after_request
    def security_headers(response):
        response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return _error(400, f"csrf_token: {error.description}")

    @app.errorhandler(413)
    def too_large(_exception):
        return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")

    @app.errorhandler(404)
    def not_found(_exception):
        return _error(404, "no such page or task")


def _error(status: int, message: str):
    if _wants_json():
        return jsonify(error=message), status
    return render_template("error.html", message=message, status=status), status


def _progress(assignments: list[dict]) -> dict:
    done = sum(a["status"] != "pending" for a in assignments)
    return {"done": done, "total": len(assignments)}


def _next_pending(assignments: list[dict], after: int = 0) -> dict | None:
    pending = [a for a in assignments if a["status"] == "pending"]
    return next((a for a in pending if a["id"] > after), pending[0] if pending else None)


def _register_pages(app: Flask) -> None:
    @app.route("/login", methods=["GET", "POST"])
    def login():
        error = None
        if request.method == "POST":
            user = db.authenticate(_connection(), request.form.get("username", ""), request.form.get("password", ""))
            if user is not None:
                session.clear()  # a fresh session on login: no fixation
                session.permanent = True
                session.update(user_id=user["id"], username=user["username"])
                target = request.args.get("next", "/")
                return redirect(target if target.startswith("/") and not target.startswith("//") else "/")
            error = "wrong username or password"
        return render_template("login.html", error=error), 401 if error else 200

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index():
        assignments = db.user_assignments(_connection(), session["user_id"])
        return render_template("index.html", assignments=assignments, progress=_progress(assignments),
                               next_task=_next_pending(assignments))

    @app.route("/task/<int:assignment_id>", methods=["GET", "POST"])
    def task(assignment_id: int):
        connection = _connection()
        assignment = db.user_assignment(connection, session["user_id"], assignment_id) or abort(404)
        error = None
        if request.method == "POST":
            try:
                answer = validate_answer(assignment["kind"], len(assignment["responses"] or []),
                                         _form_answer(assignment))
                db.submit(connection, session["user_id"], assignment_id, answer)
            except AnswerError as problem:
                error = str(problem)
            else:
                following = _next_pending(db.user_assignments(connection, session["user_id"]), assignment_id)
                return redirect(url_for("task", assignment_id=following["id"]) if following else url_for("index"))
        assignments = db.user_assignments(connection, session["user_id"])
        return render_template("task.html", a=assignment, error=error, progress=_progress(assignments),
                               position=[x["id"] for x in assignments].index(assignment_id) + 1), 400 if error else 200


def _form_answer(assignment: dict) -> dict:
    """The HTML form's fields → the answer object that :func:`validate_answer` checks."""
    form = request.form
    if form.get("action") == "skip":
        reason = form.get("skip_reason", "")
        detail = form.get("skip_detail", "").strip()
        return {"skip": f"{reason}: {detail}" if detail else reason}
    if assignment["kind"] == "demonstration":
        return {"response": form.get("response", "")}
    count = len(assignment["responses"])
    try:
        order = [int(k) for k in form.get("order", "").split(",")]
    except ValueError:
        raise AnswerError("order", "must be comma-separated response numbers") from None
    ratings = []
    for k in range(count):
        value = form.get(f"rating_{k}", "")
        if not value.isdigit():
            raise AnswerError(f"ratings[{k}]", f"rate response {k + 1} from 1 to 7")
        ratings.append(int(value))
    return {"order": order, "ratings": ratings, "flags": [form.getlist(f"flag_{k}") for k in range(count)]}


def _public(assignment: dict) -> dict:
    keys = ("id", "task_id", "kind", "status", "prompt", "responses", "category", "answer", "revision")
    return {key: assignment[key] for key in keys}


def _register_api(app: Flask) -> None:
    @app.get("/api/csrf")
    def api_csrf():
        return jsonify(csrf_token=generate_csrf())

    @app.get("/api/tasks")
    def api_tasks():
        assignments = db.user_assignments(_connection(), session["user_id"])
        return jsonify(progress=_progress(assignments), tasks=[_public(a) for a in assignments])

    @app.route("/api/tasks/<int:assignment_id>", methods=["GET", "POST"])
    def api_task(assignment_id: int):
        connection = _connection()
        assignment = db.user_assignment(connection, session["user_id"], assignment_id) or abort(404)
        if request.method == "GET":
            return jsonify(_public(assignment))
        body = request.get_json(silent=True)
        if body is None:
            return jsonify(error="body: expected a JSON object"), 400
        try:
            answer = validate_answer(assignment["kind"], len(assignment["responses"] or []), body)
        except AnswerError as problem:
            return jsonify(error=str(problem), field=problem.field), 400
        revision = db.submit(connection, session["user_id"], assignment_id, answer)
        return jsonify(id=assignment_id, revision=revision, answer=answer)
