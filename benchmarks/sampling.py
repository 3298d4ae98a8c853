"""Sampling alone: this project's `sample_responses` against `model.generate`, in one process.

    python benchmarks/sampling.py --model smollm2-135m --batch-sizes 1 16 64 --new-tokens 64 --rounds 2

Both sample exactly --new-tokens tokens per row (no early stop, so the work is equal) at
temperature 1 from the same left-padded HH-harmless prompts, under the same bf16 autocast.
Rate = generated tokens per second; model FLOP/s = 2 · N · (prompt + generated tokens) per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HH = harness.ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from rlhf.data.collate import encode_prompt, pad
    from rlhf.data.readers import read_prompts
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.rollout import sample_responses
    from rlhf.train.common import inference_autocast

    path = harness.resolve_model(args.model)
    tokenizer, model = load_tokenizer(path), load_causal_lm(path).eval()
    prompts = [ids for ids in (encode_prompt(tokenizer, p.prompt) for p in read_prompts(HH, skip_invalid=True))
               if len(ids) <= args.max_prompt_length]
    n = harness.matmul_params(model)
    peak = harness.measured_bf16_peak()
    never = -1  # an EOS id no token has: both sample every row to the full length

    def ours(ids, mask):
        sample_responses(model, ids, mask, args.new_tokens, never, tokenizer.pad_token_id, 1.0,
                         torch.Generator().manual_seed(0))

    def hf_generate(ids, mask):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                       pad_token_id=tokenizer.pad_token_id)

    print(f"sampling, {args.model}, {args.new_tokens} new tokens per row (bf16 matmul peak {peak / 1e9:.0f} GFLOP/s)")
    print(f"{'batch':>6} {'contender':<22}{'tokens/s':>10}{'GFLOP/s':>9}{'of peak':>9}{'ratio':>8}")
    for batch_size in args.batch_sizes:
        ids, mask = pad(prompts[:batch_size], tokenizer.pad_token_id, side="left")
        work_tokens = int(mask.sum()) + batch_size * args.new_tokens
        with inference_autocast():
            ours(ids[:, -8:], mask[:, -8:])  # warm-up of both paths
            hf_generate(ids[:, -8:], mask[:, -8:])
            times = {"rlhf sample_responses": [], "model.generate": []}
            for _ in range(args.rounds):
                for label, run in (("rlhf sample_responses", ours), ("model.generate", hf_generate)):
                    start = time.perf_counter()
                    run(ids, mask)
                    times[label].append(time.perf_counter() - start)
        base = statistics.median(times["model.generate"])
        for label, seconds in times.items():
            seconds = statistics.median(seconds)
            flops = 2 * n * work_tokens / seconds
            print(f"{batch_size:>6} {label:<22}{batch_size * args.new_tokens / seconds:10.1f}{flops / 1e9:9.1f}"
                  f"{flops / peak:9.1%}{base / seconds:7.2f}x", flush=True)
    print(f"peak RSS {harness.own_peak_rss_mib():.0f} MiB (both contenders in this process)")


if __name__ == "__main__":
    main()
