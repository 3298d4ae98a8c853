"""Where a decode step's time goes: `torch.profiler` over `Decoder.sample`, the prompt's share taken out.

    python benchmarks/decode_profile.py --model smollm2-135m --batch-size 16

Samples --new-tokens tokens after a --prompt-length-token random prompt (every row to the end: no
EOS), once with one new token (the prompt alone) and once with all of them, both profiled; prints
the wall time of the prompt and of a decode step, then each operator's self time per decode step
(the difference of the two profiles divided by the number of decode steps), largest first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--rows", type=int, default=16, help="operators to print")
    args = parser.parse_args()

    import torch

    from rlhf.decode import Decoder
    from rlhf.models import load_causal_lm
    from rlhf.train.common import inference_dtype

    model = load_causal_lm(harness.resolve_model(args.model)).eval()
    decoder = Decoder(model, inference_dtype())
    torch.manual_seed(0)
    ids = torch.randint(100, 1000, (args.batch_size, args.prompt_length))
    mask = torch.ones_like(ids)

    def sample(new_tokens):
        decoder.sample(ids, mask, new_tokens, -1, 0, 1.0, torch.Generator().manual_seed(0))

    def best_of_two(new_tokens):
        times = []
        for _ in range(2):
            start = time.perf_counter()
            sample(new_tokens)
            times.append(time.perf_counter() - start)
        return min(times)

    sample(4)  # warm-up at this shape
    prompt, whole = best_of_two(1), best_of_two(args.new_tokens)
    steps = args.new_tokens - 1
    forward = "PackedLlama" if getattr(decoder, "packed_llama", None) is not None else "HF forward"
    print(f"{args.model}, batch {args.batch_size}, {args.prompt_length}-token prompt, "
          f"{forward}: prompt {1000 * prompt:.1f} ms, "
          f"decode step {1000 * (whole - prompt) / steps:.2f} ms")
    profiles = []
    for new_tokens in (1, args.new_tokens):
        with torch.profiler.profile() as profile:
            sample(new_tokens)
        profiles.append({event.key: (event.self_cpu_time_total, event.count) for event in profile.key_averages()})
    per_step = {key: ((total - profiles[0].get(key, (0, 0))[0]) / steps / 1000, count - profiles[0].get(key, (0, 0))[1])
                for key, (total, count) in profiles[1].items()}
    total = sum(ms for ms, _ in per_step.values())
    print(f"operators' self time per decode step: {total:.2f} ms (the rest of the step is Python)")
    for key, (ms, count) in sorted(per_step.items(), key=lambda item: -item[1][0])[:args.rows]:
        print(f"{ms:8.3f} ms  {ms / total:6.1%}  {count // steps:6d} calls/step  {key}")


if __name__ == "__main__":
    main()
