"""What every benchmark shares: the machine's bf16 matmul peak, worker processes in their own
virtual environments, alternation between this project and its peer, and the printed table.

A benchmark script is both the orchestrator (run with the project's Python) and its workers
(``--worker NAME``, run with whichever Python has that peer installed). A worker prints one line
``RESULT {json}`` with at least ``rate`` (work items per second) and ``unit``; the harness adds
peak RSS from ``getrusage`` of the finished child.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_VENVS = {"trl": ROOT / "benchmarks" / ".venv-trl", "trl112": ROOT / "benchmarks" / ".venv-trl112"}


def peak_precision(device=None) -> str:
    """The precision the stages compute in here ("auto"): bf16 on a GPU or a CPU with fast bf16
    (avx512_bf16, AMX), else fp32 — the one whose matmul peak bounds their FLOP/s."""
    import torch

    from rlhf.train.common import cpu_has_fast_bf16

    cuda = device is not None and torch.device(device).type == "cuda"
    return "bf16" if cuda or cpu_has_fast_bf16() else "fp32"


def measured_peak(size: int = 2048, seconds: float = 3.0, device=None) -> float:
    """FLOP/s of a square matrix product on this machine in the stages' precision (the ceiling for
    model FLOP/s): bf16, or fp32 on a CPU without fast bf16 (``peak_precision``), where a bf16
    product runs at about 1 GFLOP/s and would make every fraction of peak meaningless."""
    import torch

    cuda = device is not None and torch.device(device).type == "cuda"
    size = 8192 if cuda else size
    dtype = torch.bfloat16 if peak_precision(device) == "bf16" else torch.float32
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if cuda and count % 10 == 0:
            torch.cuda.synchronize()
    if cuda:
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start)


def matmul_params(model) -> int:
    """Parameters that take part in a matrix product per token: all but an untied input embedding
    (a tied embedding is also the output projection, so it counts)."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    return sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())


def add_training_arguments(parser) -> None:
    """What every training benchmark (ours against a TRL trainer) takes besides its own shape."""
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpointing", choices=["defaults", "on", "off"], default="defaults",
                        help="gradient checkpointing: each tool's default (ours off, TRL on), or the same for both")
    parser.add_argument("--worker", choices=["ours", "trl"])
    parser.add_argument("--data")


def python_for(side: str) -> str:
    """This project's interpreter, or the peer's virtual environment (made by ``make bench-peers``)."""
    if side == "ours" or side not in PEER_VENVS:
        return sys.executable
    python = PEER_VENVS[side] / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: run `make bench-peers` first (creates the peer's virtual environment)")
    return str(python)


def run_worker(script: str, side: str, worker: str, args: list[str]) -> dict:
    """Run one worker to completion; its RESULT line plus its peak RSS in MiB."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    process = subprocess.run([python_for(side), script, "--worker", worker, *args], env=env, capture_output=True,
                             text=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        sys.stderr.write(process.stdout[-4000:] + process.stderr[-4000:])
        raise SystemExit(f"worker {worker} ({side}) failed with exit code {process.returncode}")
    result = json.loads(lines[-1][len("RESULT "):])
    # RUSAGE_CHILDREN keeps the largest child so far: the worker's own number is exact when it reports it
    result.setdefault("peak_rss_mib", max(peak_kib, before) / 1024)
    return result


def own_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict) -> None:
    """The worker's last line: what the orchestrator reads."""
    result["peak_rss_mib"] = own_peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


def alternate(script: str, contenders: list[tuple], args: list[str], rounds: int) -> dict[str, list]:
    """Run (label, side, worker[, extra args]) contenders in turn, ``rounds`` times: ours, peer, ours, …"""
    results: dict[str, list] = {contender[0]: [] for contender in contenders}
    for round_index in range(rounds):
        for label, side, worker, *extra in contenders:
            result = run_worker(script, side, worker, args + [a for group in extra for a in group])
            results[label].append(result)
            note = f"   rollout {result['rollout_fraction']:.0%}" if "rollout_fraction" in result else ""
            note += f"   after the first step {result['steady_rate']:.2f}" if "steady_rate" in result else ""
            print(f"  round {round_index + 1}: {label:<32} {result['rate']:9.2f} {result['unit']}"
                  f"   peak RSS {result['peak_rss_mib']:7.0f} MiB{note}", flush=True)
    return results


def summarise(title: str, results: dict[str, list], peak_flops: float, baseline: str) -> list[dict]:
    """Median of each contender's rounds; model FLOP/s as a fraction of the bf16 peak; ratio to ``baseline``."""
    rows = []
    base_rate = statistics.median(r["rate"] for r in results[baseline])
    print(f"\n{title}  ({peak_precision()} matmul peak {peak_flops / 1e9:.0f} GFLOP/s)")
    print(f"{'':<30}{'rate':>12} {'unit':<16}{'GFLOP/s':>9}{'of peak':>9}{'peak RSS':>11}{'ratio':>8}")
    for label, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        flops = statistics.median(r.get("model_flops_per_s", 0.0) for r in runs)
        rss = max(r["peak_rss_mib"] for r in runs)
        row = {"label": label, "rate": rate, "unit": runs[0]["unit"], "gflops": flops / 1e9,
               "fraction_of_peak": flops / peak_flops, "peak_rss_mib": rss, "ratio": rate / base_rate,
               "extra": {k: v for k, v in runs[0].items() if k not in ("rate", "unit", "model_flops_per_s",
                                                                      "peak_rss_mib")}}
        rows.append(row)
        print(f"{label:<30}{rate:12.2f} {row['unit']:<16}{row['gflops']:9.1f}{row['fraction_of_peak']:9.1%}"
              f"{rss:9.0f} MiB{row['ratio']:7.2f}x")
    return rows


def train_timed(trainer) -> tuple[int, float]:
    """Run a Hugging Face / TRL trainer; (real tokens its collator produced, seconds from the start
    of training to the end of the last optimizer step)."""
    from transformers import TrainerCallback

    tokens, clock = [0], {}
    collate = trainer.data_collator

    def counting_collate(examples):
        batch = collate(examples)
        if isinstance(batch, dict) and "attention_mask" in batch:
            tokens[0] += int(batch["attention_mask"].sum())
        return batch

    class Clock(TrainerCallback):
        def on_train_begin(self, *_args, **_kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs):
            clock["end"] = time.perf_counter()

    trainer.data_collator = counting_collate
    trainer.add_callback(Clock())
    trainer.train()
    return tokens[0], clock["end"] - clock["start"]


def metrics_rows(path: Path, name: str) -> list[float]:
    """Every value of one metric in a stage's metrics JSONL, in order."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [row[name] for row in rows if name in row]


def resolve_model(name: str) -> str:
    """A preset name → its plain HF folder (workers in peer environments cannot resolve presets)."""
    from rlhf.models.presets import resolve_model_path

    return str(resolve_model_path(name))
