"""``rlhf label``: serve the labeling app, manage its accounts, move data in and out of its database.

    rlhf label add-user  --db labels.db NAME [--admin]        # password from RLHF_LABEL_PASSWORD or a prompt
    rlhf label load      --db labels.db --prompts FILE --kind demonstration
    rlhf label load      --db labels.db --responses FILE [--overlap 0.2 --replicas 3]
    rlhf label load      --db labels.db --prompts FILE --model runs/demo/sft --model runs/demo/ppo -k 4
    rlhf label serve     --db labels.db [--host 127.0.0.1 --port 8000] [--behind-proxy | --secure-cookies]
    rlhf label export    --db labels.db --output labeled/   # demonstrations.jsonl, comparisons.jsonl
    rlhf label agreement --db labels.db
    rlhf label disable-user|enable-user|reset-password --db labels.db NAME
    rlhf label audit     --db labels.db [--limit 50]        # logins, failures, admin actions

Only ``add-user`` creates a database; every other command refuses one that does not exist.
See docs/labeling.md.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
from pathlib import Path

from rlhf.arguments import COUNT, NON_NEGATIVE, PORT, POSITIVE_INT, number
from rlhf.data.records import DataError
from rlhf.outputs import check_output_folder, output_folder

logger = logging.getLogger(__name__)


def add_label_commands(commands) -> None:
    label = commands.add_parser("label", help="the labeling web app: demonstrations and rankings")
    actions = label.add_subparsers(dest="action", required=True)
    parsers = {name: actions.add_parser(name, help=text) for name, text in (
        ("serve", "run the web app"),
        ("add-user", "create a labeler (or admin) account"),
        ("load", "add tasks: prompts to answer, or responses to rank"),
        ("export", "write demonstrations.jsonl and comparisons.jsonl for training"),
        ("agreement", "pairwise ranking agreement on tasks given to several labelers"),
        ("disable-user", "refuse an account's logins and end its sessions"),
        ("enable-user", "let a disabled account log in again"),
        ("reset-password", "set a new password (from RLHF_LABEL_PASSWORD or a prompt); ends the user's sessions"),
        ("audit", "print the audit log: logins, failed and throttled logins, logouts, admin actions"))}
    for name, parser in parsers.items():
        created = " (created if missing)" if name == "add-user" else " (made by add-user)"
        parser.add_argument("--db", required=True, help="SQLite database file" + created)
    serve = parsers["serve"]
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                                                           "then use HTTPS, see --behind-proxy)")
    serve.add_argument("--port", type=PORT, default=8000)
    serve.add_argument("--threads", type=POSITIVE_INT, default=8)
    serve.add_argument("--secure-cookies", action="store_true",
                       help="always mark the session cookie Secure: browsers send it over HTTPS only "
                            "(when every request arrives over HTTPS)")
    serve.add_argument("--behind-proxy", action="store_true",
                       help="trust one reverse proxy's X-Forwarded-For/-Proto/-Host: the client address for "
                            "throttling and the audit log, and a Secure cookie when the proxy says https")
    serve.add_argument("--idle-timeout", type=float, default=120.0, metavar="MINUTES",
                       help="a session ends after this long without a request (default 120)")
    serve.add_argument("--session-lifetime", type=float, default=12.0, metavar="HOURS",
                       help="a session ends this long after logging in, however active (default 12)")
    for name in ("add-user", "disable-user", "enable-user", "reset-password"):
        parsers[name].add_argument("username")
    parsers["add-user"].add_argument("--admin", action="store_true")
    parsers["audit"].add_argument("--limit", type=_positive_int, default=50, help="the newest N events (default 50)")
    load = parsers["load"]
    load.add_argument("--prompts", help="prompt file (any supported format)")
    load.add_argument("--responses", help="file of {prompt, responses: [text | {text, model}]} rows to rank")
    load.add_argument("--kind", choices=["demonstration", "ranking"], default="ranking")
    load.add_argument("--model", action="append", default=[], help="checkpoint to sample responses from "
                                                                    "(repeatable; with --prompts)")
    load.add_argument("-k", type=number(int, 2), default=4, help="responses per prompt when sampling (paper: 4 to 9)")
    load.add_argument("--max-new-tokens", type=POSITIVE_INT, default=128)
    load.add_argument("--temperature", type=NON_NEGATIVE, default=0.7)
    load.add_argument("--overlap", type=float, default=0.0, help="fraction of tasks given to several labelers")
    load.add_argument("--replicas", type=number(int, 2), default=2, help="labelers per overlapping task")
    load.add_argument("--seed", type=COUNT, default=0)
    parsers["export"].add_argument("--output", required=True, help="new folder for the two JSONL files")
    parsers["export"].add_argument("--overwrite", action="store_true",
                                   help="replace an earlier export (nothing else is ever replaced)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_label(args: argparse.Namespace) -> None:
    from rlhf.label import db

    # only add-user creates a database (a typo must not make an empty one), and none opens a file of someone else's
    db.require_database(args.db, create=args.action == "add-user")
    if args.action == "serve":
        _serve(args)
        return
    if args.action == "export":  # refuse a destructive output before opening anything
        check_output_folder(args.output, "label export", [args.db], args.overwrite)
    connection = db.initialise(args.db)
    try:
        actions = {"add-user": _add_user, "load": _load, "export": _export, "agreement": _agreement,
                   "disable-user": _set_disabled, "enable-user": _set_disabled, "reset-password": _reset_password,
                   "audit": _audit}
        actions[args.action](connection, args)
    finally:
        connection.close()


def _serve(args) -> None:
    import waitress

    from rlhf.label.app import create_app
    from rlhf.label.security import SessionPolicy, is_loopback

    sessions = SessionPolicy(idle_timeout_s=args.idle_timeout * 60, absolute_timeout_s=args.session_lifetime * 3600)
    app = create_app(args.db, secure_cookies=args.secure_cookies, behind_proxy=args.behind_proxy, sessions=sessions)
    if not is_loopback(args.host) and not (args.secure_cookies or args.behind_proxy):
        logger.warning("serving on %s over plain HTTP: passwords and session cookies cross the network in clear "
                       "text. Put HTTPS in front and pass --behind-proxy (or --secure-cookies); see "
                       "docs/labeling.md", args.host)
    logger.info("serving %s on http://%s:%d", args.db, args.host, args.port)
    waitress.serve(app, host=args.host, port=args.port, threads=args.threads)


def _password(username: str) -> str:
    return os.environ.get("RLHF_LABEL_PASSWORD") or getpass.getpass(f"password for {username}: ")


def _user(connection, args):
    from rlhf.label import db

    try:
        return db.user_by_name(connection, args.username)
    except LookupError as error:
        raise DataError(f"{args.db}: {error}") from None


def _add_user(connection, args) -> None:
    from rlhf.label import db

    try:
        db.add_user(connection, args.username, _password(args.username), args.admin)
    except ValueError as error:
        raise DataError(f"add-user: {error}") from None
    role = "admin" if args.admin else "labeler"
    db.record(connection, "user_added", "cli", None, f"{role} {args.username}")
    print(f"{args.db}: added {role} {args.username}")


def _set_disabled(connection, args) -> None:
    from rlhf.label import db

    disable = args.action == "disable-user"
    db.set_disabled(connection, _user(connection, args)["id"], disable)
    db.record(connection, "user_disabled" if disable else "user_enabled", "cli", None, f"user {args.username}")
    print(f"{args.db}: {'disabled' if disable else 'enabled'} {args.username}"
          + (" and ended their sessions" if disable else ""))


def _reset_password(connection, args) -> None:
    from rlhf.label import db

    user = _user(connection, args)
    try:
        db.set_password(connection, user["id"], _password(args.username))
    except ValueError as error:
        raise DataError(f"reset-password: {error}") from None
    db.record(connection, "password_reset", "cli", None, f"user {args.username}")
    print(f"{args.db}: new password for {args.username}; their sessions are ended")


def _audit(connection, args) -> None:
    from rlhf.label import db

    rows = db.audit_log(connection, args.limit)
    if not rows:
        print(f"{args.db}: no events yet")
    for row in rows:
        print(db.audit_line(row))


def _load(connection, args) -> None:
    from rlhf.label.load import demonstration_tasks, load_tasks, read_ranking_tasks, sample_ranking_tasks

    if args.responses:
        tasks = read_ranking_tasks(args.responses)
    elif not args.prompts:
        raise DataError("load: give --prompts FILE (with --kind demonstration or --model) or --responses FILE")
    elif args.kind == "demonstration":
        tasks = demonstration_tasks(args.prompts)
    elif args.model:
        tasks = sample_ranking_tasks(args.prompts, args.model, args.k, args.max_new_tokens, args.temperature,
                                     args.seed)
    else:
        raise DataError("load: ranking tasks need responses: --responses FILE or --model CHECKPOINT")
    assignees = load_tasks(connection, tasks, args.overlap, args.replicas, args.seed)
    shared = sum(len(a) > 1 for a in assignees)
    print(f"{args.db}: added {len(tasks)} {tasks[0]['kind']} tasks, {sum(map(len, assignees))} assignments "
          f"({shared} tasks given to {args.replicas} labelers)")


def _export(connection, args) -> None:
    from rlhf.data.curate import to_canonical
    from rlhf.label import db
    from rlhf.label.answers import to_records

    rows = db.answered(connection)
    demonstrations, comparisons = to_records(rows)
    output = Path(args.output)
    with output_folder(output, "label export", [args.db], args.overwrite) as staging:
        for name, records in (("demonstrations", demonstrations), ("comparisons", comparisons)):
            with open(staging / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(to_canonical(r), ensure_ascii=False) + "\n" for r in records)
    skipped = sum("skip" in row["answer"] for row in rows)
    print(f"{args.db}: {len(demonstrations)} demonstrations, {len(comparisons)} comparisons "
          f"({skipped} skipped tasks left out) → {output}")


def _agreement(connection, args) -> None:
    from rlhf.label import db
    from rlhf.label.answers import agreement, to_records

    result = agreement(to_records(db.answered(connection))[1])
    if not result["tasks"]:
        raise DataError(f"{args.db}: no ranking task has answers from two labelers yet (load with --overlap)")
    print(f"overall: {100 * result['overall']:.1f} ± {100 * result['standard_error']:.1f} % "
          f"over {result['pairs']} response pairs on {result['tasks']} shared tasks")
    for name, row in result["per_labeler"].items():
        print(f"  {name}: {100 * row['agreement']:.1f} % ({row['pairs']} pairs, {row['tasks']} tasks)")
