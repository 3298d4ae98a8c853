"""``rlhf label``: serve the labeling app and move data in and out of its database.

    rlhf label add-user  --db labels.db NAME [--admin]        # password from RLHF_LABEL_PASSWORD or a prompt
    rlhf label load      --db labels.db --prompts FILE --kind demonstration
    rlhf label load      --db labels.db --responses FILE [--overlap 0.2 --replicas 3]
    rlhf label load      --db labels.db --prompts FILE --model runs/demo/sft --model runs/demo/ppo -k 4
    rlhf label serve     --db labels.db [--host 127.0.0.1 --port 8000]
    rlhf label export    --db labels.db --output labeled/   # demonstrations.jsonl, comparisons.jsonl
    rlhf label agreement --db labels.db
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
from pathlib import Path

from rlhf.data.records import DataError

logger = logging.getLogger(__name__)


def add_label_commands(commands) -> None:
    label = commands.add_parser("label", help="the labeling web app: demonstrations and rankings")
    actions = label.add_subparsers(dest="action", required=True)
    parsers = {name: actions.add_parser(name, help=text) for name, text in (
        ("serve", "run the web app"),
        ("add-user", "create a labeler (or admin) account"),
        ("load", "add tasks: prompts to answer, or responses to rank"),
        ("export", "write demonstrations.jsonl and comparisons.jsonl for training"),
        ("agreement", "pairwise ranking agreement on tasks given to several labelers"))}
    for parser in parsers.values():
        parser.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    serve = parsers["serve"]
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--secure-cookies", action="store_true", help="send the session cookie over HTTPS only")
    user = parsers["add-user"]
    user.add_argument("username")
    user.add_argument("--admin", action="store_true")
    load = parsers["load"]
    load.add_argument("--prompts", help="prompt file (any supported format)")
    load.add_argument("--responses", help="file of {prompt, responses: [text | {text, model}]} rows to rank")
    load.add_argument("--kind", choices=["demonstration", "ranking"], default="ranking")
    load.add_argument("--model", action="append", default=[], help="checkpoint to sample responses from "
                                                                    "(repeatable; with --prompts)")
    load.add_argument("-k", type=int, default=4, help="responses per prompt when sampling (paper: 4 to 9)")
    load.add_argument("--max-new-tokens", type=int, default=128)
    load.add_argument("--temperature", type=float, default=0.7)
    load.add_argument("--overlap", type=float, default=0.0, help="fraction of tasks given to several labelers")
    load.add_argument("--replicas", type=int, default=2, help="labelers per overlapping task")
    load.add_argument("--seed", type=int, default=0)
    parsers["export"].add_argument("--output", required=True, help="folder for the two JSONL files")


def run_label(args: argparse.Namespace) -> None:
    from rlhf.label import db

    if args.action == "serve":
        import waitress

        from rlhf.label.app import create_app

        logger.info("serving %s on http://%s:%d", args.db, args.host, args.port)
        waitress.serve(create_app(args.db, args.secure_cookies), host=args.host, port=args.port, threads=args.threads)
        return
    connection = db.initialise(args.db)
    try:
        actions = {"add-user": _add_user, "load": _load, "export": _export, "agreement": _agreement}
        actions[args.action](connection, args)
    finally:
        connection.close()


def _add_user(connection, args) -> None:
    from rlhf.label import db

    password = os.environ.get("RLHF_LABEL_PASSWORD") or getpass.getpass(f"password for {args.username}: ")
    try:
        db.add_user(connection, args.username, password, args.admin)
    except ValueError as error:
        raise DataError(f"add-user: {error}") from None
    print(f"{args.db}: added {'admin' if args.admin else 'labeler'} {args.username}")


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
    from rlhf.data.readers import write_jsonl
    from rlhf.label import db
    from rlhf.label.answers import to_records

    rows = db.answered(connection)
    demonstrations, comparisons = to_records(rows)
    output = Path(args.output)
    for name, records in (("demonstrations", demonstrations), ("comparisons", comparisons)):
        write_jsonl(output / f"{name}.jsonl", [to_canonical(r) for r in records])
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
