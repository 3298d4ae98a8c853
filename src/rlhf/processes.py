"""Processes of ours: the log set-up each one shares, and work run in a fresh process of its own.

:func:`in_own_process` runs a function in a spawned Python process and hands back its return value
or raises its exception here. A one-process pipeline evaluates that way, for two measured reasons
(BENCHMARKS.md, "The evaluation in a process of its own"): after the demo's PPO the pipeline's
process held 9.1 GB that glibc kept with no tensor alive (it is given back before the other process
starts: 0.9 GB), and the evaluation ran about 10 % faster in its own process (its time over the same
run's PPO time: 1.11–1.12 against 1.23–1.24 in the process that trained). No model, tensor, thread
or setting outlives a stage in Python; the rest of the gap to a fresh command (1.0) is not explained.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import sys
import traceback

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
NOISY_LOGGERS = ("httpx", "urllib3", "transformers", "accelerate")


def configure_logging(level: int) -> None:
    """The command's log lines (``LEVEL logger: message`` on stderr); other libraries' at WARNING."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ProcessDied(RuntimeError):
    """A process of :func:`in_own_process` ended without an answer (killed, or out of memory)."""


def in_own_process(name: str, function, *args):
    """``function(*args)`` in a spawned process (a fresh interpreter that imports what it needs and
    shares no memory with this one): its return value, or its exception raised here with the other
    process's traceback as a note. ``function`` and ``args`` are pickled (a module-level function).
    The process writes to the same stderr (its log lines and progress bars) with this one's log
    level. Interrupted here (Ctrl-C, SIGTERM), the other process is stopped before this one goes on
    unwinding. A process that dies without answering raises :class:`ProcessDied` naming ``name``."""
    release_free_memory()  # what this process freed, before another one allocates its own
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_answer, args=(send, function, args, logging.getLogger().level),
                              name=f"rlhf {name}")
    process.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        outcome = None
    except BaseException:
        process.terminate()
        raise
    finally:
        process.join()
        receive.close()
    if outcome is None:
        raise ProcessDied(f"{name}: its process ended without an answer (exit code {process.exitcode})")
    kind, value, trace = outcome
    if kind == "raised":
        value.add_note(f"in the {name} process:\n{trace}")
        raise value
    return value


def release_free_memory() -> None:
    """Give the memory this process has freed back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). glibc keeps what a training stage freed: after the demo's PPO the pipeline's process
    held 9.1 GB with no tensor alive, beside the 4.5 GB its evaluation's own process needed."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


def _answer(send, function, args, level: int) -> None:
    configure_logging(level)
    try:
        outcome = ("returned", function(*args), None)
    except BaseException as error:  # KeyboardInterrupt too: the caller decides
        outcome = ("raised", error, traceback.format_exc())
    try:
        send.send(outcome)
    except Exception as error:  # an exception or a value that does not pickle: its text
        send.send(("raised", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}"
                                          f" (not picklable: {error})"), outcome[2]))
    send.close()
