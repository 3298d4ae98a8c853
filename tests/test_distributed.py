"""Data parallelism on 2 CPU processes (``torch.distributed.run``, gloo): what the processes must agree
on (metrics, whitening, a NaN, a stop signal, the weights), and SFT, the reward model and PPO run on two
processes: replicas identical after every step, and SFT/RM equal to one process with the same global
batch (one process accumulating two micro-batches of the size each of the two processes takes)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from processes import cpu_env
from rlhf.data.synthetic import write_synthetic_data

AGREEMENT = r'''
import json, sys, torch
from accelerate import Accelerator
from rlhf.losses import whiten
from rlhf.train.common import (NonFiniteGuard, ReplicasDiverged, any_process, check_replicas, mean_over_processes,
                               sum_over_processes)

accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
out = {"mean": mean_over_processes(accelerator, {"a": float(rank), "b": 10.0 * rank + 1}),
       "any": [any_process(accelerator, rank == 1), any_process(accelerator, False)]}
guard = NonFiniteGuard(3, lambda flag: any_process(accelerator, flag))
out["update_goes_on"] = guard.check("ppo", 1, loss=torch.tensor(float("nan") if rank == 1 else 1.0))
values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[rank:rank + 1]
out["whitened"] = whiten(values, torch.ones_like(values), reduce=sum_over_processes(accelerator)).tolist()
torch.manual_seed(0)
model = torch.nn.Linear(3, 2)
check_replicas(accelerator, "ppo", 1, {"policy": model})  # the same seed: the same weights
if rank == 1:
    with torch.no_grad():
        model.weight[0, 0] += 1e-6
try:
    check_replicas(accelerator, "ppo", 2, {"policy": model})
    out["diverged"] = None
except ReplicasDiverged as error:
    out["diverged"] = str(error)
Path = __import__("pathlib").Path
Path(sys.argv[1] + f".{rank}").write_text(json.dumps(out))
torch.distributed.destroy_process_group()  # as rlhf.cli does: gloo's threads must not outlive the interpreter
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_processes(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           f"--master_port={free_port()}", *args], capture_output=True, text=True, env=cpu_env(),
                          timeout=600)


def one_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=cpu_env(), timeout=600)


def test_processes_agree_on_metrics_whitening_a_nan_and_the_weights(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(AGREEMENT)
    done = two_processes(str(script), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    whole = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # whitened as one batch: mean 3.5, unbiased std √3.5
    expected = [(x - 3.5) / 3.5 ** 0.5 for x in whole]
    for rank, out in enumerate(ranks):
        assert out["mean"] == {"a": 0.5, "b": 6.0}
        assert out["any"] == [True, False]
        assert out["update_goes_on"] is False  # the NaN was on process 1 only: both skip
        assert out["whitened"][0] == pytest.approx(expected[3 * rank:3 * rank + 3], rel=1e-6)
        assert out["diverged"] == ("ppo: step 2: the policy weights on process 1 differ from process 0's "
                                   "(check_replicas_every); the processes are no longer one data-parallel run: "
                                   "check that each runs the same code and config")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_data(tmp_path_factory.mktemp("data"), n_demos=64, n_comparisons=48, n_prompts=32)


def assert_close_weights(left: Path, right: Path) -> None:
    a, b = load_file(left / "model.safetensors"), load_file(right / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)  # Adam on fp32 sums


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_two_processes_equal_one_accumulating_the_same_global_batch_with_and_without_sharding(stage, data, tmp_path,
                                                                                               tiny_path):
    """Each process takes batch_size 2 (4 per step in all) against one process taking 2 × 2 with
    gradient accumulation: the same batches in the same order, the same mean of batch means. With
    FSDP2 each process holds half of every weight, and the folder written is the whole model."""
    common = [f"model={tiny_path}", "max_steps=4", "batch_size=2", "max_length=128", "mixed_precision=fp32",
              "learning_rate=1e-3", "valid_fraction=0.1"]
    common += [f"data=[{data['demonstrations']}]", "dropout=0.0"] if stage == "sft" else \
        [f"data=[{data['comparisons']}]"]
    one = one_process("-m", "rlhf.cli", stage, *common, f"output_dir={tmp_path / 'one'}", "grad_accum_steps=2")
    assert one.returncode == 0, one.stderr[-3000:]
    for name, extra in (("ddp", ["check_replicas_every=1"]), ("fsdp2", ["sharding=fsdp2"])):
        two = two_processes("-m", "rlhf.cli", stage, *common, f"output_dir={tmp_path / name}", *extra)
        assert two.returncode == 0, two.stderr[-3000:]
        meta = json.loads((tmp_path / name / "rlhf.json").read_text())
        assert meta["world_size"] == 2 and meta["sharded"] == (name == "fsdp2")
        assert_close_weights(tmp_path / name, tmp_path / "one")
    start = load_file(Path(tiny_path) / "model.safetensors")
    trained = load_file(tmp_path / "fsdp2" / "model.safetensors")
    assert any(not torch.allclose(trained[name], start[name]) for name in trained if name in start)
    if stage == "sft":  # plain transformers loads the gathered folder and gives the same logits
        from transformers import AutoModelForCausalLM

        ids = torch.tensor([[1, 5, 9, 3]])
        with torch.no_grad():
            torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp2")(ids).logits,
                                       AutoModelForCausalLM.from_pretrained(tmp_path / "one")(ids).logits,
                                       rtol=1e-4, atol=1e-5)
    else:
        from transformers import AutoModelForSequenceClassification

        AutoModelForSequenceClassification.from_pretrained(tmp_path / "fsdp2")


def test_ppo_on_two_processes_keeps_its_replicas_identical_shares_ptx_and_evaluation_and_shards(data, tmp_path,
                                                                                                 tiny_path):
    """PPO-ptx on two processes: replicas checked identical after every step, ptx and evaluation shared
    out; with FSDP2 (policy and value sharded) the same weights as with DDP, within fp32 tolerance."""
    reward = tmp_path / "reward"
    done = one_process("-m", "rlhf.cli", "reward", f"model={tiny_path}", f"data=[{data['comparisons']}]",
                       "max_steps=2", "batch_size=4", "max_length=128", "mixed_precision=fp32",
                       f"output_dir={reward}")
    assert done.returncode == 0, done.stderr[-3000:]
    for name, extra in (("ddp", "check_replicas_every=1"), ("fsdp2", "sharding=fsdp2")):
        metrics = tmp_path / f"{name}.jsonl"
        done = two_processes("-m", "rlhf.cli", "ppo", f"model={tiny_path}", f"reward_model={reward}",
                             f"prompts=[{data['prompts']}]", f"pretraining={data['pretraining']}", "ptx_coef=1.0",
                             "ptx_batch_size=4", "ptx_block_size=32", "total_episodes=24", "rollout_batch_size=8",
                             "num_minibatches=2", "ppo_epochs=2", "max_new_tokens=12", "max_prompt_length=64",
                             "max_length=96", "mixed_precision=fp32", "eval_prompts=5", "valid_fraction=0.25",
                             extra, f"metrics_file={metrics}", f"output_dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        steps = [row for row in rows if "ppo/loss/ptx" in row]
        assert len(steps) == 3 and all(row["ppo/loss/ptx"] > 0 for row in steps)
        final = json.loads((tmp_path / name / "rlhf.json").read_text())
        assert final["world_size"] == 2 and final["sharded"] == (name == "fsdp2")
        assert final["metrics"]["eval/prompts"] == 5.0  # 3 + 2, gathered
    assert_close_weights(tmp_path / "fsdp2", tmp_path / "ddp")
    start = load_file(Path(tiny_path) / "model.safetensors")
    trained = load_file(tmp_path / "fsdp2" / "model.safetensors")
    assert any(not torch.allclose(trained[name], start[name]) for name in trained if name in start)


def test_a_sharded_run_killed_and_resumed_equals_an_uninterrupted_one(data, tmp_path, tiny_path):
    """FSDP2's mid-stage checkpoints are sharded (each process writes its part): kill -9 both
    processes after the second, re-run the command, and the result is the uninterrupted run's."""
    import time

    import psutil

    def args(output):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", f"--master_port={free_port()}",
                "-m", "rlhf.cli", "sft", f"model={tiny_path}", f"data=[{data['demonstrations']}]",
                f"output_dir={output}", "max_steps=8", "batch_size=2", "dropout=0.0", "learning_rate=1e-3",
                "max_length=128", "checkpoint_every=2", "mixed_precision=fp32", "sharding=fsdp2"]

    done = subprocess.run(args(tmp_path / "whole"), capture_output=True, text=True, env=cpu_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path / "killed"
    process = subprocess.Popen(args(output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cpu_env())
    checkpoints = output.with_name("killed.incomplete") / "checkpoints"
    deadline = time.time() + 300
    while len(list(checkpoints.glob("step-*"))) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.01)
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=60)
    again = subprocess.run(args(output), capture_output=True, text=True, env=cpu_env(), timeout=600)
    assert again.returncode == 0 and "resuming sft at step" in again.stderr, again.stderr[-3000:]
    assert_close_weights(output, tmp_path / "whole")


FINISH = ("import atexit, sys; atexit.register(print, 'FINALIZED'); sys.argv[0] = 'rlhf'; "
          "from rlhf.cli import entry; entry()")


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_torchrun_worker_that_succeeded_leaves_without_interpreter_shutdown_and_loses_no_output(world_size):
    """Under torchrun (WORLD_SIZE > 1) a successful command skips interpreter shutdown, where gloo's
    threads can abort a finished rank; what it printed is flushed first (stdout is a pipe here, so
    block-buffered). A failing command, or a single process, exits the ordinary way."""
    worker = world_size == "2"
    done = subprocess.run([sys.executable, "-c", FINISH, "config", "sft"], capture_output=True, text=True,
                          env=cpu_env(WORLD_SIZE=world_size, PYTHONUNBUFFERED=""), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "learning_rate:" in done.stdout  # the YAML printed before the exit
    assert done.stdout.rstrip().endswith("FINALIZED") != worker
    failed = subprocess.run([sys.executable, "-c", FINISH, "sft", "no_such_field=1"], capture_output=True,
                            text=True, env=cpu_env(WORLD_SIZE=world_size, PYTHONUNBUFFERED=""), timeout=120)
    assert failed.returncode == 2 and "no_such_field" in failed.stderr, failed.stderr[-2000:]
    assert failed.stdout.rstrip().endswith("FINALIZED")


def test_a_torchrun_worker_whose_output_pipe_closed_does_not_exit_as_a_success():
    """The reader of stdout went away before the flush at the exit: the output was lost, and the
    command says so with Python's own code for it (120), not 0."""
    worker = subprocess.Popen([sys.executable, "-c", FINISH, "config", "sft"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=cpu_env(WORLD_SIZE="2", PYTHONUNBUFFERED=""))
    worker.stdout.close()  # long before the command prints (it imports for seconds)
    assert worker.wait(timeout=120) == 120


def test_ptx_batches_are_shared_out_between_processes():
    """Every process draws the same global batch and takes every N-th block: N processes read the
    blocks one process reads, none twice."""
    from types import SimpleNamespace

    from rlhf.train.ppo import PPOTrainer

    blocks = torch.arange(40).reshape(20, 2)

    def draws(rank: int, world: int) -> list:
        trainer = SimpleNamespace(
            config=SimpleNamespace(ptx_batch_size=6), ptx_blocks=blocks, ptx_order=torch.Generator().manual_seed(3),
            accelerator=SimpleNamespace(process_index=rank, num_processes=world, device=torch.device("cpu")))
        return [PPOTrainer.next_ptx_batch(trainer)[:, 0].tolist() for _ in range(3)]

    alone, first, second = draws(0, 1), draws(0, 2), draws(1, 2)
    for step in range(3):
        assert len(first[step]) == len(second[step]) == 3
        assert sorted(first[step] + second[step]) == sorted(alone[step])
        assert first[step] == alone[step][0::2] and second[step] == alone[step][1::2]


def test_rloo_groups_stay_whole_on_one_process_and_the_processes_share_out_the_prompts():
    """With RLOO (k = 4) each process gets whole groups of 4 samples of one prompt; 2 processes
    taking 8 episodes each see, between them, the 4 prompts one process taking 16 sees."""
    from types import SimpleNamespace

    from rlhf.data.collate import PromptSampler
    from rlhf.train.ppo import PPOTrainer

    def draws(rank: int, world: int, count: int) -> list:
        trainer = SimpleNamespace(
            config=SimpleNamespace(group_size=4), train_prompts=[(i, None) for i in range(12)],
            prompt_sampler=PromptSampler([12], None, torch.Generator().manual_seed(5)),
            accelerator=SimpleNamespace(process_index=rank, num_processes=world))
        return [[p[0] for p in PPOTrainer.next_prompts(trainer, count)] for _ in range(3)]

    alone, first, second = draws(0, 1, 16), draws(0, 2, 8), draws(1, 2, 8)
    for step in range(3):
        for share in (alone[step], first[step], second[step]):
            groups = [share[i:i + 4] for i in range(0, len(share), 4)]
            assert all(len(set(group)) == 1 for group in groups)  # k samples of one prompt, in a row
        assert sorted(first[step] + second[step]) == sorted(alone[step])
        assert not set(first[step]) & set(second[step])


def test_a_ptx_batch_that_does_not_split_evenly_is_a_config_error():
    from rlhf.config import ConfigError, PPOConfig
    from rlhf.train.ppo import check_batching

    config = PPOConfig(ptx_coef=1.0, ptx_batch_size=3, rollout_batch_size=8)
    with pytest.raises(ConfigError, match=r"ppo.ptx_batch_size \(3\) must be divisible by the number of "
                                          r"processes \(2\)"):
        check_batching(config, 2)
    check_batching(config, 1)
    check_batching(PPOConfig(ptx_coef=0.0, ptx_batch_size=3, rollout_batch_size=8), 2)  # no ptx: no matter


def test_lora_with_fsdp2_is_a_config_error_naming_both():
    from rlhf.config import SFTConfig

    with pytest.raises(ValueError, match="sharding: fsdp2 with lora is not supported yet"):
        SFTConfig(sharding="fsdp2", lora={"r": 4})


def test_accelerate_launch_with_the_fsdp2_example_config_shards(data, tmp_path, tiny_path):
    """The environment accelerate's launcher makes of examples/accelerate/fsdp2.yaml (computed by
    accelerate itself) shards the stage as ``sharding=fsdp2`` does, to the same weights."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    example = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp2.yaml"
    launch = launch_command_parser().parse_args(["--config_file", str(example), "--num_processes", "2", "x.py"])
    launched = prepare_multi_gpu_env(_validate_launch_command(launch)[0])
    assert launched["ACCELERATE_USE_FSDP"] == "true" and launched["FSDP_VERSION"] == "2"
    fsdp_env = {key: value for key, value in launched.items() if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    common = ["-m", "rlhf.cli", "sft", f"model={tiny_path}", f"data=[{data['demonstrations']}]", "max_steps=2",
              "batch_size=2", "dropout=0.0", "max_length=128", "mixed_precision=fp32"]
    runs = {}
    for name, extra_env, extra in (("launched", fsdp_env, []), ("configured", {}, ["sharding=fsdp2"])):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               f"--master_port={free_port()}", *common, f"output_dir={tmp_path / name}", *extra],
                              capture_output=True, text=True, env={**cpu_env(), **extra_env}, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "rlhf.json").read_text())
        assert runs[name]["sharded"] is True
    assert_close_weights(tmp_path / "launched", tmp_path / "configured")
    version_one = subprocess.run([sys.executable, *common, f"output_dir={tmp_path / 'v1'}"], capture_output=True,
                                 text=True, env={**cpu_env(), **fsdp_env, "FSDP_VERSION": "1"}, timeout=600)
    assert version_one.returncode == 2 and "FSDP version 1 is not supported" in version_one.stderr
    assert not (tmp_path / "v1").exists()


@pytest.mark.parametrize("count", [1, 5])
def test_evaluation_shares_the_prompts_and_every_process_makes_the_same_calls(monkeypatch, count):
    """Sampling a sharded model is a collective: a process with fewer (or no) prompts must still make
    as many rollout calls as the others; what it adds for padding is dropped before the gather."""
    from types import SimpleNamespace

    from rlhf.train import ppo

    calls, sent = {0: [], 1: []}, {}

    def process(rank: int):
        class Engine:
            def rollout(self, ids, conversations, source):
                calls[rank].append((source, len(ids)))
                return SimpleNamespace(scores=torch.ones(len(ids)), logprobs=torch.zeros(len(ids), 2),
                                       ref_logprobs=torch.zeros(len(ids), 2))
        return SimpleNamespace(engine=Engine(), accelerator=SimpleNamespace(process_index=rank, num_processes=2))

    prompts = [([1, 2], [{"role": "user", "content": f"p{i}"}]) for i in range(count)]
    for rank in (0, 1):
        monkeypatch.setattr(ppo, "gather_object", lambda rows, rank=rank: sent.setdefault(rank, rows) or [(0., 0., 0.)])
        ppo.PPOTrainer.evaluate(process(rank), prompts, batch_size=2)
    assert calls[0] == calls[1] and calls[0]
    assert len(sent[0]) + len(sent[1]) == count and len(sent[0]) == -(-count // 2)
