"""The labeling web application (Flask): log in, write demonstrations, rank responses; admins
manage accounts.

Pages: ``/login``, ``/`` (my tasks and progress), ``/task/<id>`` (one assignment; POST submits),
``/admin`` (admins only: accounts, progress per labeler, agreement, the audit log; POST
``/admin/users`` adds an account, ``/admin/users/<id>/disable|enable|password`` change one).
JSON API for scripts and the page itself: ``GET /api/csrf``, ``GET /api/tasks``,
``GET|POST /api/tasks/<id>``; every error under ``/api/`` is JSON ``{"error", "field"?}``.

Every route but login and ``/api/csrf`` needs a session; every POST needs the CSRF token (form
field ``csrf_token`` or header ``X-CSRFToken``). A session is a row in the database (see
:mod:`rlhf.label.db`); the signed cookie carries only its random token and the CSRF nonce, so
logging out, disabling the account, resetting its password or the idle/absolute timeout ends it
at once. A labeler can read and answer only their own assignments: anyone else's is a 404, as if
it did not exist; admin routes are a 403 for them.
"""

from __future__ import annotations

import datetime
import sqlite3
import time
from pathlib import Path

from flask import (
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from rlhf.label import db
from rlhf.label.answers import (
    FLAGS,
    SKIP_REASONS,
    AnswerError,
    agreement,
    parse_body,
    parse_id,
    to_records,
    validate_answer,
)
from rlhf.label.security import LoginThrottle, SessionPolicy, load_secret_key, retry_after_header, safe_next

MAX_BODY_BYTES = 1 << 20
BUSY_RETRY_AFTER_S = 2
PUBLIC_ENDPOINTS = {"login", "static", "api_csrf"}
ERROR_MESSAGES = {
    403: "this page is for admins",
    404: "no such page or task",
    405: "this method is not allowed here",
    413: f"request body larger than {MAX_BODY_BYTES} bytes",
    500: "internal error (the server log has the details)",
}


def create_app(database: str | Path, secure_cookies: bool = False, behind_proxy: bool = False,
               sessions: SessionPolicy = SessionPolicy(), throttle: LoginThrottle = LoginThrottle(),
               busy_timeout_s: float = db.REQUEST_BUSY_TIMEOUT_S) -> Flask:
    """The app for one existing database file.

    ``secure_cookies``: the cookie is always ``Secure`` (serving HTTPS yourself). ``behind_proxy``:
    trust one reverse proxy's ``X-Forwarded-For/-Proto/-Host`` (the client's address for throttling
    and the audit log; ``https`` makes the cookie ``Secure``). Without it those headers are ignored.
    A request waits ``busy_timeout_s`` for a busy database, then answers 503 with ``Retry-After``."""
    db.require_database(database)
    db.initialise(database).close()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=load_secret_key(database),
        DATABASE=str(database),
        LABEL_SESSIONS=sessions,
        LABEL_THROTTLE=throttle,
        LABEL_BUSY_TIMEOUT_S=busy_timeout_s,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        # the cookie ends with the browser; its signature is refused after the absolute lifetime
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=sessions.absolute_timeout_s),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
    )
    app.session_interface = _SessionCookie()
    if behind_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    _register_hooks(app)  # before CSRFProtect's own hook: no session is a 401, whatever the token
    CSRFProtect(app)
    app.jinja_env.globals.update(FLAGS=FLAGS, SKIP_REASONS=SKIP_REASONS, csrf_token=generate_csrf)
    app.jinja_env.filters["utc"] = db.format_time
    _register_pages(app)
    _register_admin(app)
    _register_api(app)
    return app


class _SessionCookie(SecureCookieSessionInterface):
    """Flask's signed cookie, marked ``Secure`` when configured so or when the request came over
    HTTPS (directly, or as a trusted proxy's ``X-Forwarded-Proto`` says)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def _connection():
    """One connection per request, closed when the request ends."""
    if "db" not in g:
        g.db = db.connect(current_app.config["DATABASE"], current_app.config["LABEL_BUSY_TIMEOUT_S"])
    return g.db


def _client_ip() -> str:
    return request.remote_addr or "unknown"


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None):
    """The error as JSON under ``/api/`` (``{"error", "field"?}``), else as a page."""
    if _wants_json():
        response = jsonify(error=message, **({"field": field} if field else {}))
    else:
        response = make_response(render_template("error.html", message=message, status=status))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def load_user():
        """``g.user`` from the session's token; log in first unless the page is public; admin
        pages are for admins."""
        token = session.get("sid")
        g.user = db.session_user(_connection(), token, app.config["LABEL_SESSIONS"]) \
            if isinstance(token, str) else None
        if token is not None and g.user is None:
            session.pop("sid")  # ended, expired or disabled: forget it
        if g.user is None and request.endpoint not in PUBLIC_ENDPOINTS:
            if _wants_json():
                return _error(401, "log in first")
            return redirect(url_for("login", next=request.path))
        if (request.endpoint or "").startswith("admin") and not g.user["is_admin"]:
            abort(403)

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
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"  # no labeler's page left in a shared browser's cache
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return _error(400, f"csrf_token: {error.description}", field="csrf_token")

    @app.errorhandler(AnswerError)
    def bad_input(error):
        return _error(400, str(error), field=error.field)

    @app.errorhandler(HTTPException)
    def http_error(error):
        headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
        return _error(error.code, ERROR_MESSAGES.get(error.code, error.description), headers=headers)

    @app.errorhandler(sqlite3.OperationalError)
    def database_error(error):
        if db.is_busy(error):
            return _error(503, "the database is busy; try again in a moment",
                          headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
        current_app.logger.error("database error on %s %s", request.method, request.path, exc_info=error)
        return _error(500, ERROR_MESSAGES[500])


def _progress(assignments: list[dict]) -> dict:
    done = sum(a["status"] != "pending" for a in assignments)
    return {"done": done, "total": len(assignments)}


def _next_pending(assignments: list[dict], after: int = 0) -> dict | None:
    pending = [a for a in assignments if a["status"] == "pending"]
    return next((a for a in pending if a["id"] > after), pending[0] if pending else None)


def _own_assignment(assignment_id: str) -> dict:
    """The current user's assignment by the id in the URL; 400 for a malformed id, 404 for anyone else's."""
    return db.user_assignment(_connection(), g.user["id"], parse_id(assignment_id)) or abort(404)


def _begin_login_attempt(connection, username: str, address: str) -> tuple[float, int | None]:
    """In one transaction: the seconds this attempt must still wait (then it is logged as
    throttled), or 0 and its audit row, logged as a failure until the password checks out, so
    that guesses sent at the same moment count against the limit too.

    An address with no failed login in the window is not held back by the account's count: a
    guesser elsewhere cannot lock the account's owner out (each new address buys one guess)."""
    throttle, now = current_app.config["LABEL_THROTTLE"], time.time()
    since = now - throttle.window_s
    with db.transaction(connection):
        from_here = db.failed_logins(connection, since, client_ip=address)
        account = db.failed_logins(connection, since, actor=username) if from_here else []
        wait = max(throttle.wait_s(account, throttle.per_account, now),
                   throttle.wait_s(from_here, throttle.per_address, now))
        if wait:
            db.record(connection, "login_throttled", username, address, f"retry after {retry_after_header(wait)} s")
            return wait, None
        return 0.0, db.record(connection, "login_failed", username, address, "checking the password")


def _register_pages(app: Flask) -> None:
    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            return render_template("login.html", error=None)
        connection, address = _connection(), _client_ip()
        username, password = request.form.get("username", ""), request.form.get("password", "")
        wait, attempt = _begin_login_attempt(connection, username, address)
        if wait:
            retry = retry_after_header(wait)
            response = make_response(render_template(
                "login.html", error=f"too many failed logins: try again in {retry} s"), 429)
            response.headers["Retry-After"] = retry
            return response
        user = db.authenticate(connection, username, password)
        if user is None or user["disabled"]:
            problem = "wrong username or password" if user is None else "this account is disabled; ask an admin"
            db.amend(connection, attempt, "login_failed", problem)
            return render_template("login.html", error=problem), 401
        db.amend(connection, attempt, "login", "")
        if g.user is not None:  # logging in again over a live session: that one ends
            db.end_session(connection, session["sid"])
        token = db.create_session(connection, user["id"], app.config["LABEL_SESSIONS"])
        session.clear()  # a fresh cookie (and CSRF nonce) on login: no fixation
        session["sid"] = token
        return redirect(safe_next(request.args.get("next")))

    @app.post("/logout")
    def logout():
        connection = _connection()
        db.end_session(connection, session["sid"])
        db.record(connection, "logout", g.user["username"], _client_ip())
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index():
        assignments = db.user_assignments(_connection(), g.user["id"])
        return render_template("index.html", assignments=assignments, progress=_progress(assignments),
                               next_task=_next_pending(assignments))

    @app.route("/task/<assignment_id>", methods=["GET", "POST"])
    def task(assignment_id: str):
        connection, user_id = _connection(), g.user["id"]
        assignment = _own_assignment(assignment_id)
        error = None
        if request.method == "POST":
            try:
                answer = validate_answer(assignment["kind"], len(assignment["responses"] or []),
                                         _form_answer(assignment))
                db.submit(connection, user_id, assignment["id"], answer)
            except AnswerError as problem:
                error = str(problem)
            else:
                following = _next_pending(db.user_assignments(connection, user_id), assignment["id"])
                return redirect(url_for("task", assignment_id=following["id"]) if following else url_for("index"))
        assignments = db.user_assignments(connection, user_id)
        position = [x["id"] for x in assignments].index(assignment["id"]) + 1
        return render_template("task.html", a=assignment, error=error, progress=_progress(assignments),
                               position=position), 400 if error else 200


def _form_answer(assignment: dict) -> dict:
    """The HTML form's fields → the answer object that :func:`validate_answer` checks (numbers
    only in ASCII digits: ``int()`` would also take ``"١"``, ``" 1"`` or ``"1_0"``)."""
    form = request.form
    if form.get("action") == "skip":
        reason = form.get("skip_reason", "")
        detail = form.get("skip_detail", "").strip()
        return {"skip": f"{reason}: {detail}" if detail else reason}
    if assignment["kind"] == "demonstration":
        return {"response": form.get("response", "")}
    count = len(assignment["responses"])
    order = [parse_id(k, "order") for k in form.get("order", "").split(",")]
    ratings = []
    for k in range(count):
        value = form.get(f"rating_{k}", "")
        if not value:
            raise AnswerError(f"ratings[{k}]", f"rate response {k + 1} from 1 to 7")
        ratings.append(parse_id(value, f"ratings[{k}]"))
    return {"order": order, "ratings": ratings, "flags": [form.getlist(f"flag_{k}") for k in range(count)]}


def _register_admin(app: Flask) -> None:
    """Admin pages: every endpoint here is named ``admin…``, which the login hook keeps to admins."""

    def page(error: str | None = None):
        connection = _connection()
        result = agreement(to_records(db.answered(connection))[1])
        return render_template("admin.html", users=db.users_with_progress(connection), agreement=result,
                               events=db.audit_log(connection, 30), error=error), 400 if error else 200

    def target(user_id: str) -> sqlite3.Row:
        row = _connection().execute("SELECT * FROM users WHERE id = ?", (parse_id(user_id),)).fetchone()
        return row or abort(404)

    def done(event: str, detail: str):
        db.record(_connection(), event, g.user["username"], _client_ip(), detail)
        return redirect(url_for("admin"))

    @app.get("/admin")
    def admin():
        return page()

    @app.post("/admin/users")
    def admin_add_user():
        username, is_admin = request.form.get("username", "").strip(), request.form.get("is_admin") == "on"
        try:
            db.add_user(_connection(), username, request.form.get("password", ""), is_admin)
        except ValueError as error:
            return page(f"add user: {error}")
        return done("user_added", f"{'admin' if is_admin else 'labeler'} {username}")

    @app.post("/admin/users/<user_id>/disable")
    def admin_disable(user_id: str):
        user = target(user_id)
        if user["id"] == g.user["id"]:
            return page("disable: you cannot disable your own account")
        db.set_disabled(_connection(), user["id"], True)
        return done("user_disabled", f"user {user['username']}")

    @app.post("/admin/users/<user_id>/enable")
    def admin_enable(user_id: str):
        user = target(user_id)
        db.set_disabled(_connection(), user["id"], False)
        return done("user_enabled", f"user {user['username']}")

    @app.post("/admin/users/<user_id>/password")
    def admin_reset_password(user_id: str):
        user = target(user_id)
        try:
            db.set_password(_connection(), user["id"], request.form.get("password", ""))
        except ValueError as error:
            return page(f"reset password of {user['username']}: {error}")
        return done("password_reset", f"user {user['username']}")


def _public(assignment: dict) -> dict:
    keys = ("id", "task_id", "kind", "status", "prompt", "responses", "category", "answer", "revision")
    return {key: assignment[key] for key in keys}


def _register_api(app: Flask) -> None:
    @app.get("/api/csrf")
    def api_csrf():
        return jsonify(csrf_token=generate_csrf())

    @app.get("/api/tasks")
    def api_tasks():
        assignments = db.user_assignments(_connection(), g.user["id"])
        return jsonify(progress=_progress(assignments), tasks=[_public(a) for a in assignments])

    @app.route("/api/tasks/<assignment_id>", methods=["GET", "POST"])
    def api_task(assignment_id: str):
        assignment = _own_assignment(assignment_id)
        if request.method == "GET":
            return jsonify(_public(assignment))
        if not request.is_json:
            raise AnswerError("body", "expected a JSON object (Content-Type: application/json)")
        answer = validate_answer(assignment["kind"], len(assignment["responses"] or []),
                                 parse_body(request.get_data()))
        revision = db.submit(_connection(), g.user["id"], assignment["id"], answer)
        return jsonify(id=assignment["id"], revision=revision, answer=answer)
