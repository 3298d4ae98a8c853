"""Work in a process of its own (rlhf.processes.in_own_process): its answer, its errors, its death,
and an interrupted caller."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from processes import cpu_env
from rlhf.data.records import DataError
from rlhf.processes import ProcessDied, in_own_process


def doubled_with_its_pid(x):
    logging.getLogger("rlhf.test").info("hello from the other process")
    return 2 * x, os.getpid(), logging.getLogger().level


def bad_record(path):
    raise DataError(f"{path}:3: prompt: must be a string")


def dies():
    os._exit(3)


def sleeps(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)


def test_the_answer_comes_from_another_process_with_this_ones_log_level(caplog):
    caplog.set_level(logging.DEBUG)  # the root logger's, restored after the test
    value, pid, level = in_own_process("doubling", doubled_with_its_pid, 21)
    assert (value, level) == (42, logging.DEBUG) and pid != os.getpid()


def test_its_error_is_raised_here_as_it_was_with_its_traceback_as_a_note():
    with pytest.raises(DataError) as raised:
        in_own_process("reading", bad_record, "data.jsonl")
    assert str(raised.value) == "data.jsonl:3: prompt: must be a string"  # the line the command prints
    assert any("in the reading process" in note and "bad_record" in note for note in raised.value.__notes__)


def test_a_process_that_dies_without_an_answer_is_named_with_its_exit_code():
    with pytest.raises(ProcessDied, match=r"^dying: its process ended without an answer \(exit code 3\)$"):
        in_own_process("dying", dies)


def test_an_interrupted_caller_stops_the_other_process(tmp_path):
    """Ctrl-C (SIGINT) to the caller alone: the process it started is gone when the caller has exited."""
    pid_file = tmp_path / "pid"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_processes import sleeps; "
            f"from rlhf.processes import in_own_process; in_own_process('sleeping', sleeps, {str(pid_file)!r})")
    caller = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=cpu_env())
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert caller.poll() is None and time.time() < deadline
        time.sleep(0.05)
    other = psutil.Process(int(pid_file.read_text()))
    caller.send_signal(signal.SIGINT)
    _, stderr = caller.communicate(timeout=60)
    assert "KeyboardInterrupt" in stderr
    other.wait(timeout=10)  # raises psutil.TimeoutExpired if it lives on
    assert not other.is_running()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_memory_this_process_freed_goes_back_to_the_system_before_another_starts():
    """200 MB of 64 KiB blocks (below glibc's mmap threshold: from the heap), each followed by a small
    block that stays: freed, the big ones are holes glibc keeps (no free memory at the heap's top to
    give back) until released; then the resident size falls by most of them."""
    from rlhf.processes import release_free_memory

    me = psutil.Process()
    blocks, pins = [], []
    for _ in range(3200):
        block = bytearray(64 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # every page touched: resident
        blocks.append(block)
        pins.append(bytearray(600))
    del block
    held = me.memory_info().rss
    blocks.clear()
    kept = me.memory_info().rss
    release_free_memory()
    released = me.memory_info().rss
    assert held - kept < 50e6 and kept - released > 150e6, (held, kept, released)
    assert len(pins) == 3200
