"""The attention kernel of a training stage (``attn_implementation``): sdpa against eager, in one process.

    python benchmarks/attention.py --model smollm2-135m --lengths 128 192 256 384 --rounds 2

For each row length: one training step (the SFT forward — loss on the second half of each row —,
backward and a fused AdamW step, bf16 autocast, batch 8 with a quarter of the rows left-padded by a
quarter of their length) and one forward without gradients (the scoring passes of PPO and the
evaluation), with transformers' sdpa and eager attention alternating round by round on the same
model weights. Rate = tokens per second (median of --rounds, after one warm-up step each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

KERNELS = ("sdpa", "eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 192, 256, 384])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    args = parser.parse_args()

    import torch

    from rlhf.models import ResponseLM, load_causal_lm

    model = load_causal_lm(harness.resolve_model(args.model))
    model.config.use_cache = False
    lm = ResponseLM(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    batch = args.batch_size
    results: dict[tuple, list[float]] = {}
    print(f"{harness.peak_precision()} peak {harness.measured_peak() / 1e9:.0f} GFLOP/s; {args.model}, batch {batch}")
    for length in args.lengths:
        generator = torch.Generator().manual_seed(length)
        ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
        attention_mask = torch.ones_like(ids)
        attention_mask[: batch // 4, : length // 4] = 0  # left padding on a quarter of the rows
        loss_mask = torch.zeros_like(ids)
        loss_mask[:, length // 2:] = 1

        def train_step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = lm(ids, attention_mask, loss_mask)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        @torch.no_grad()
        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.base_model(input_ids=ids, attention_mask=attention_mask)

        for _ in range(args.rounds):
            for kernel in KERNELS:
                model.set_attn_implementation(kernel)
                for name, step in (("train", train_step), ("forward", forward)):
                    step()  # warm-up at this shape and kernel
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    rate = args.steps * batch * length / (time.perf_counter() - start)
                    results.setdefault((length, name, kernel), []).append(rate)
    print("| tokens per row | pass | sdpa tokens/s | eager tokens/s | eager / sdpa |")
    print("| --- | --- | --- | --- | --- |")
    for length in args.lengths:
        for name in ("train", "forward"):
            sdpa, eager = (statistics.median(results[(length, name, k)]) for k in KERNELS)
            print(f"| {length} | {name} | {sdpa:.0f} | {eager:.0f} | {eager / sdpa:.2f}× |")


if __name__ == "__main__":
    main()
