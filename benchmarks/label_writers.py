"""The labeling server's writes under contention: many request threads of one process writing to
one database, each with the app's short busy timeout, side by side in one run:

- `rlhf writer queue`: connections from `rlhf.label.db.connect` — a process's writers wait in
  arrival order on its writer queue (`WriterQueue`), then take SQLite's lock;
- `SQLite busy handler`: plain `sqlite3.connect(timeout=…)` connections — each writer polls the
  lock on SQLite's back-off (sleeps of 1 … 100 ms) until its timeout.

    python benchmarks/label_writers.py --threads 16 --writes 40 --hold-ms 5 --timeout-s 0.25 --rounds 3

A timed-out write is what the app answers with 503 (``Retry-After``). With T threads each holding
the lock h ms, a first-come-first-served queue waits at most (T − 1)·h: none should time out
while that is below the timeout.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def run(queue: bool, threads: int, writes: int, hold_s: float, timeout_s: float) -> dict:
    from rlhf.label import db

    path = Path(tempfile.mkdtemp()) / "labels.db"
    setup = db.connect(path)
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.close()
    counts = {"committed": 0, "timed_out": 0}
    lock, start = threading.Lock(), threading.Barrier(threads)

    def writer(seat: int) -> None:
        if queue:
            connection = db.connect(path, busy_timeout_s=timeout_s)
        else:
            connection = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
        start.wait()
        for _ in range(writes):
            try:
                with db.transaction(connection):
                    connection.execute("INSERT INTO t VALUES (?)", (seat,))
                    time.sleep(hold_s)
                outcome = "committed"
            except sqlite3.OperationalError as error:
                if not db.is_busy(error):
                    raise
                outcome = "timed_out"
            with lock:
                counts[outcome] += 1
        connection.close()

    began = time.perf_counter()
    workers = [threading.Thread(target=writer, args=(seat,)) for seat in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {**counts, "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--writes", type=int, default=40, help="per thread")
    parser.add_argument("--hold-ms", type=float, default=5.0, help="how long each write holds the lock")
    parser.add_argument("--timeout-s", type=float, default=0.25, help="each connection's busy timeout")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {"rlhf writer queue": [], "SQLite busy handler": []}
    for _ in range(args.rounds):  # alternate, so that a slow moment of the host hits both
        for name in results:
            results[name].append(run(name == "rlhf writer queue", args.threads, args.writes,
                                     args.hold_ms / 1000, args.timeout_s))
    total = args.threads * args.writes
    print(f"{args.threads} threads x {args.writes} writes, {args.hold_ms:g} ms held, {args.timeout_s:g} s timeout, "
          f"{args.rounds} rounds (median)")
    print("| contender | writes timed out (503) | of | wall time, s |")
    print("| --- | --- | --- | --- |")
    for name, rounds in results.items():
        print(f"| {name} | {statistics.median(r['timed_out'] for r in rounds):g} "
              f"({', '.join(str(r['timed_out']) for r in rounds)}) | {total} | "
              f"{statistics.median(r['seconds'] for r in rounds):.1f} |")


if __name__ == "__main__":
    main()
