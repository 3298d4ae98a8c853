"""Mid-stage checkpoints, proven by kill -9: a stage killed from outside at any moment — including
while it writes a checkpoint — and run again with the same command ends with the bit-identical
weights of a run that was never interrupted."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from processes import cpu_env
from rlhf.data.synthetic import write_synthetic_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_data(tmp_path_factory.mktemp("data"), n_demos=160, n_comparisons=96, n_prompts=64)


def command(stage: str, *overrides: str, flags: tuple = ()) -> list[str]:
    return [sys.executable, "-m", "rlhf.cli", stage, *flags, *overrides]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=cpu_env(), **kwargs)
    return done


def kill_when(args: list[str], ready, env_extra: dict | None = None, sig=signal.SIGKILL) -> int:
    """Start the command, wait until ``ready()`` holds, then send it ``sig``; its exit status."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=cpu_env(**(env_extra or {})))
    deadline = time.time() + 300
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before it could be interrupted")
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(sig)
    return process.wait(timeout=300)


def rows(path: Path, name: str) -> int:
    try:
        return path.read_text().count(f'"{name}"')
    except OSError:
        return 0


def checkpoints(output: Path, partial: bool = False) -> list[Path]:
    root = output.with_name(output.name + ".incomplete") / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if "step-" in p.name and p.name.endswith(".partial") == partial)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_identical(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def sft_args(data, output: Path, *extra: str) -> list[str]:
    return command("sft", "model=tiny", f"data=[{data['demonstrations']}]", f"output_dir={output}", "max_steps=24",
                   "batch_size=8", "dropout=0.1", "learning_rate=1e-3", "max_length=128", "checkpoint_every=4",
                   "epochs=2", f"metrics_file={output.parent / (output.name + '.metrics.jsonl')}", *extra)


@pytest.fixture(scope="module")
def uninterrupted_sft(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "sft"
    done = run(sft_args(data, output))
    assert done.returncode == 0, done.stderr[-2000:]
    return output


@pytest.mark.parametrize("after_rows", [3, 13])
def test_sft_killed_mid_run_resumes_to_identical_weights(data, uninterrupted_sft, tmp_path, after_rows):
    output = tmp_path / "sft"
    metrics = output.parent / "sft.metrics.jsonl"
    kill_when(sft_args(data, output), lambda: rows(metrics, "sft/loss") >= after_rows)
    assert not output.exists()  # nothing looks finished
    again = run(sft_args(data, output))
    assert again.returncode == 0, again.stderr[-2000:]
    if checkpoints(output) or "resuming sft" in again.stderr:
        assert "resuming sft at step" in again.stderr
    assert_identical(output, uninterrupted_sft)
    assert not output.with_name("sft.incomplete").exists() and not (output / "checkpoints").exists()
    steps = [line for line in metrics.read_text().splitlines() if '"sft/loss"' in line]
    assert len(steps) == 24  # rows logged after the checkpoint and before the kill were not kept twice


def test_sft_killed_while_writing_a_checkpoint_resumes_from_the_one_before(data, uninterrupted_sft, tmp_path):
    output = tmp_path / "sft"
    slow = {"RLHF_TEST_CHECKPOINT_WRITE_DELAY": "3"}
    kill_when(sft_args(data, output), lambda: len(checkpoints(output)) >= 1 and checkpoints(output, partial=True),
              slow)
    complete = checkpoints(output)
    assert [p.name for p in complete] == ["step-00000004"]  # the one being written never counts
    again = run(sft_args(data, output))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming sft at step 4 of 24" in again.stderr
    assert_identical(output, uninterrupted_sft)


def test_resuming_exactly_at_an_epoch_boundary_trains_what_is_left(data, tmp_path):
    """verl #5725: a run resumed at an epoch boundary exited having trained nothing."""
    def args(output):
        return sft_args(data, output, "checkpoint_every=1000", "max_steps=null")  # epoch ends only

    reference = tmp_path / "reference"
    assert run(args(reference)).returncode == 0
    output = tmp_path / "sft"
    kill_when(args(output), lambda: len(checkpoints(output)) >= 1)
    assert [p.name for p in checkpoints(output)] == ["step-00000018"]  # 144 training demos / 8: one epoch
    again = run(args(output))
    assert "resuming sft at step 18 of 36" in again.stderr
    assert_identical(output, reference)


def test_a_changed_config_is_refused_unless_forced_and_restart_starts_over(data, tmp_path):
    output = tmp_path / "sft"
    kill_when(sft_args(data, output), lambda: len(checkpoints(output)) >= 1)
    refused = run(sft_args(data, output, "learning_rate=5e-4"))
    assert refused.returncode == 2
    assert "learning_rate: 0.001 → 0.0005" in refused.stderr and "--force" in refused.stderr
    assert checkpoints(output)  # refusing changed nothing
    forced = run(sft_args(data, output, "learning_rate=5e-4") + ["--force"])
    assert forced.returncode == 0 and "resuming sft" in forced.stderr, forced.stderr[-2000:]
    other = tmp_path / "other"
    kill_when(sft_args(data, other), lambda: len(checkpoints(other)) >= 1)
    fresh = run(sft_args(data, other) + ["--restart"])
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr


def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(data, uninterrupted_sft, tmp_path):
    output = tmp_path / "sft"
    kill_when(sft_args(data, output), lambda: len(checkpoints(output)) >= 2)
    newest = checkpoints(output)[-1]
    (newest / "model.safetensors").write_bytes(b"\0" * 100)
    again = run(sft_args(data, output))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"checkpoint {newest} is corrupt" in again.stderr
    assert "resuming sft at step" in again.stderr
    assert_identical(output, uninterrupted_sft)


def test_sigterm_checkpoints_at_the_step_boundary_and_exits_130(data, uninterrupted_sft, tmp_path):
    output = tmp_path / "sft"
    metrics = output.parent / "sft.metrics.jsonl"
    status = kill_when(sft_args(data, output), lambda: rows(metrics, "sft/loss") >= 6, sig=signal.SIGTERM)
    assert status == 130
    saved = checkpoints(output)
    assert saved and int(saved[-1].name.split("-")[1]) >= 6  # written on the way out
    again = run(sft_args(data, output))
    assert f"resuming sft at step {int(saved[-1].name.split('-')[1])} of 24" in again.stderr
    assert_identical(output, uninterrupted_sft)


def test_reward_killed_mid_run_resumes_to_identical_weights(data, tmp_path):
    def args(output):
        return command("reward", "model=tiny", f"data=[{data['comparisons']}]", f"output_dir={output}",
                       "max_steps=10", "batch_size=8", "learning_rate=1e-3", "max_length=128", "checkpoint_every=2",
                       f"normalize_data=[{data['demonstrations']}]")

    reference = tmp_path / "reference"
    assert run(args(reference)).returncode == 0
    output = tmp_path / "rm"
    kill_when(args(output), lambda: len(checkpoints(output)) >= 2)
    again = run(args(output))
    assert again.returncode == 0 and "resuming reward at step" in again.stderr, again.stderr[-2000:]
    assert_identical(output, reference)


def test_ppo_killed_mid_run_resumes_to_identical_weights(data, tmp_path):
    sft, rm = tmp_path / "sft", tmp_path / "rm"
    assert run(command("sft", "model=tiny", f"data=[{data['demonstrations']}]", f"output_dir={sft}", "max_steps=4",
                       "max_length=128")).returncode == 0
    assert run(command("reward", f"model={sft}", f"data=[{data['comparisons']}]", f"output_dir={rm}", "max_steps=4",
                       "max_length=128")).returncode == 0

    def args(output):
        return command("ppo", f"model={sft}", f"reward_model={rm}", f"prompts=[{data['prompts']}]",
                       f"pretraining={data['pretraining']}", f"output_dir={output}", "total_episodes=64",
                       "rollout_batch_size=8", "num_minibatches=2", "max_new_tokens=12", "max_prompt_length=64",
                       "max_length=128", "ptx_batch_size=2", "ptx_block_size=32", "adaptive_kl=true",
                       "checkpoint_every=2", "eval_prompts=8", "learning_rate=1e-4",
                       f"metrics_file={output.parent / (output.name + '.jsonl')}")

    reference = tmp_path / "reference"
    assert run(args(reference)).returncode == 0
    output = tmp_path / "ppo"
    kill_when(args(output), lambda: rows(output.parent / "ppo.jsonl", "objective/kl") >= 5)
    again = run(args(output))
    assert again.returncode == 0 and "resuming ppo at step" in again.stderr, again.stderr[-2000:]
    assert_identical(output, reference)
    import json

    final = json.loads((output / "rlhf.json").read_text())["metrics"]
    expected = json.loads((reference / "rlhf.json").read_text())["metrics"]
    assert final["eval/win_rate_vs_sft"] == expected["eval/win_rate_vs_sft"]


def test_a_full_disk_loses_no_complete_checkpoint_and_the_newest_n_are_kept(tmp_path, monkeypatch, caplog):
    import errno

    from rlhf.checkpoint import Checkpoints, RunControl
    from rlhf.config import SFTConfig
    from rlhf.train.common import make_accelerator

    config = SFTConfig(mixed_precision="fp32", output_dir=str(tmp_path / "out"))
    accelerator = make_accelerator(config)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    (tmp_path / "staging").mkdir()
    checkpoints = Checkpoints(tmp_path / "staging", "sft", accelerator, config, keep=2)
    checkpoints.resume(RunControl())
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(step)
        assert checkpoints.save(step, {"total_steps": 9}) is not None
    assert [p.name for p in checkpoints.complete()] == ["step-00000002", "step-00000003"]

    def disk_full(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 10)  # half-written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with torch.no_grad():
        model.weight.fill_(4)
    assert checkpoints.save(4, {"total_steps": 9}) is None
    assert "No space left on device" in caplog.text
    assert sorted(p.name for p in checkpoints.root.iterdir() if "step" in p.name) == ["step-00000002",
                                                                                       "step-00000003"]
    monkeypatch.undo()
    state = Checkpoints(tmp_path / "staging", "sft", accelerator, config, keep=2)._load_newest(RunControl(), None)
    assert state["step"] == 3 and torch.all(model.weight == 3)


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_two_process_run(data, tmp_path, tiny_path):
    def args(output):
        import socket

        with socket.socket() as probe:  # a fresh port each run: the killed run's may not be free yet
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", f"--master_port={port}",
                "-m", "rlhf.cli", "sft",
                f"model={tiny_path}", f"data=[{data['demonstrations']}]", f"output_dir={output}", "max_steps=10",
                "batch_size=4", "dropout=0.1", "learning_rate=1e-3", "max_length=128", "checkpoint_every=2",
                "mixed_precision=fp32"]

    reference = tmp_path / "reference"
    done = run(args(reference))
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path / "sft"
    process = subprocess.Popen(args(output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cpu_env())
    deadline = time.time() + 300
    while len(checkpoints(output)) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    import psutil

    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in family:  # torchrun and both ranks (they run in sessions of their own)
        member.kill()
    psutil.wait_procs(family, timeout=60)
    again = run(args(output))
    assert again.returncode == 0 and "resuming sft at step" in again.stderr, again.stderr[-3000:]
    left, right = weights(output), weights(reference)
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=1e-5, atol=1e-6)


def test_starting_over_removes_only_what_the_stage_wrote(tmp_path):
    """A staging folder left by an attempt with no usable checkpoint: its own files go; a file somebody
    else put there is refused by name and nothing is removed."""
    from rlhf.checkpoint import Checkpoints, RunControl
    from rlhf.config import SFTConfig
    from rlhf.outputs import MARKER, OutputError
    from rlhf.train.common import make_accelerator

    config = SFTConfig(mixed_precision="fp32", output_dir=str(tmp_path / "sft"))
    accelerator = make_accelerator(config)
    staging = tmp_path / "sft.incomplete"
    (staging / "checkpoints" / ".step-00000002.partial").mkdir(parents=True)
    (staging / MARKER).write_text('{"command": "sft", "files": []}')
    (staging / "checkpoints" / "start.json").write_text('{"metrics_bytes": 0}')
    (staging / "model.safetensors").write_bytes(b"earlier attempt")
    (staging / "notes.txt").write_text("mine")
    checkpoints = Checkpoints(staging, "sft", accelerator, config)
    with pytest.raises(OutputError, match=r"sft.incomplete: holds notes.txt, which rlhf sft did not write"):
        checkpoints.resume(RunControl())
    assert (staging / "notes.txt").read_text() == "mine" and (staging / "model.safetensors").exists()
    assert (staging / "checkpoints" / ".step-00000002.partial").is_dir()
    (staging / "notes.txt").unlink()
    assert checkpoints.resume(RunControl()) is None
    assert sorted(p.name for p in staging.iterdir()) == sorted([MARKER, "checkpoints"])
    assert [p.name for p in (staging / "checkpoints").iterdir()] == ["start.json"]
