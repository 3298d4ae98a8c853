"""One linear layer of SmolLM2-135M's shape: PyTorch's ``linear`` against the oneDNN product on
weights packed once (what the `Decoder` samples with on a CPU), in fp32 and, where this CPU has
fast bf16, in bf16, at the row counts of decoding (1–64) and of a prefill (256).

    python benchmarks/linear.py                # ~1 min
    python benchmarks/linear.py --rows 1 16 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def timed(function, calls: int = 100) -> float:
    """Mean seconds per call over ``calls`` calls, after 10 warm-up calls."""
    for _ in range(10):
        function()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--shapes", nargs="+", default=["576x1536", "1536x576", "576x49152"],
                        help="in x out features (SmolLM2-135M: MLP up, MLP down, output layer)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from rlhf.decode import PackedLinear, can_pack

    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [torch.float32] + ([torch.bfloat16] if harness.peak_precision() == "bf16" else [])
    print(f"{torch.get_num_threads()} threads; {harness.peak_precision()} is this CPU's fast precision")
    print(f"{'dtype':<9}{'shape':<11}{'rows':>5}{'linear µs':>11}{'packed µs':>11}{'linear GFLOP/s':>16}"
          f"{'packed GFLOP/s':>16}{'speed-up':>10}")
    torch.manual_seed(0)
    for dtype in dtypes:
        if not can_pack(dtype):
            print(f"{dtype}: no oneDNN packing in this torch build")
            continue
        for shape in args.shapes:
            fan_in, fan_out = (int(x) for x in shape.split("x"))
            layer = torch.nn.Linear(fan_in, fan_out, bias=False).to(dtype)
            for rows in args.rows:
                x = torch.randn(rows, fan_in, dtype=dtype)
                packed = PackedLinear(layer, batch_hint=rows, dtype=dtype)
                with torch.no_grad():
                    plain = timed(lambda: torch.nn.functional.linear(x, layer.weight))
                    ours = timed(lambda: packed(x))
                flops = 2 * rows * fan_in * fan_out
                name = str(dtype).removeprefix("torch.")
                print(f"{name:<9}{shape:<11}{rows:>5}{plain * 1e6:>11.0f}{ours * 1e6:>11.0f}"
                      f"{flops / plain / 1e9:>16.1f}{flops / ours / 1e9:>16.1f}{plain / ours:>9.2f}×", flush=True)


if __name__ == "__main__":
    main()
