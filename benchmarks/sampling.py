"""Sampling alone: this project's decoder against `model.generate`, in one process, on CPU or GPU.

    python benchmarks/sampling.py --model smollm2-135m --batch-sizes 1 16 64 --new-tokens 64 --rounds 2
    python benchmarks/sampling.py --model .gpu/smollm2 --random-weights --batch-sizes 16 64 256   # GPU

Contenders, each sampling exactly --new-tokens tokens per row (no early stop, so the work is
equal) at temperature 1 from the same left-padded HH-harmless prompts:
- `rlhf Decoder`: what PPO and `generate` use — a static KV cache; under bf16 a bf16 copy of the
  weights (oneDNN pre-packed on CPU); on a GPU the decode step compiled with CUDA graphs;
- `rlhf eager`: `sample_responses`, the dynamic-cache loop (the eager path), under bf16 autocast;
- `model.generate`: transformers' sampling, fp32 weights under bf16 autocast, as a user calls it;
- on a GPU also `generate static bf16`: `generate` on bf16 weights with `cache_implementation="static"`
  (transformers then compiles its own decode step): the strongest baseline transformers offers.
Rate = generated tokens per second (median of --rounds); each contender's first call at a shape is
a warm-up, timed separately ("first call" = compilation and CUDA-graph capture included).
Model FLOP/s = 2 · N · (prompt + generated tokens) per second.
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
    parser.add_argument("--random-weights", action="store_true", help="build the model from its config (no weights)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--contenders", nargs="+", default=None,
                        help="subset of: decoder eager generate generate-static")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.data.collate import encode_prompt, pad
    from rlhf.data.readers import read_prompts
    from rlhf.decode import Decoder, sample_responses
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.train.common import inference_autocast, inference_dtype

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    path = args.model if args.random_weights else harness.resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    if args.random_weights:
        from transformers import AutoConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    else:
        model = load_causal_lm(path)
    model = model.to(device).eval()
    prompts = [ids for ids in (encode_prompt(tokenizer, p.prompt) for p in read_prompts(HH, skip_invalid=True))
               if len(ids) <= args.max_prompt_length]
    n = harness.matmul_params(model)
    peak = harness.measured_peak(device=device)
    never = -1  # an EOS id no token has: every contender samples every row to the full length
    decoder = Decoder(model, inference_dtype())
    hf_static = None
    chosen = args.contenders or ["decoder", "eager", "generate"] + (["generate-static"] if cuda else [])
    if "generate-static" in chosen:
        import copy

        hf_static = copy.deepcopy(model).to(torch.bfloat16)

    def ours(ids, mask, seed):
        decoder.sample(ids, mask, args.new_tokens, never, tokenizer.pad_token_id, 1.0,
                       torch.Generator(device=device).manual_seed(seed))

    def eager(ids, mask, seed):
        sample_responses(model, ids, mask, args.new_tokens, never, tokenizer.pad_token_id, 1.0,
                         torch.Generator(device=device).manual_seed(seed))

    def hf_generate(ids, mask, seed, target=model, **extra):
        target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                        min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                        pad_token_id=tokenizer.pad_token_id, **extra)

    def hf_generate_static(ids, mask, seed):
        hf_generate(ids, mask, seed, target=hf_static, cache_implementation="static")

    runners = {"decoder": ("rlhf Decoder", ours), "eager": ("rlhf eager", eager),
               "generate": ("model.generate", hf_generate), "generate-static": ("generate static bf16",
                                                                                hf_generate_static)}
    contenders = [runners[name] for name in chosen]
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"sampling on {name}, {args.model}{' (random weights)' if args.random_weights else ''}, "
          f"{args.new_tokens} new tokens per row "
          f"({harness.peak_precision(device)} matmul peak {peak / 1e9:.0f} GFLOP/s)")
    print(f"{'batch':>6} {'contender':<22}{'tokens/s':>10}{'ms/step':>9}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'first call':>11}{'ratio':>8}")

    def timed(run, ids, mask, seed):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(ids, mask, seed)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for batch_size in args.batch_sizes:
        chunk = [prompts[i % len(prompts)] for i in range(batch_size)]
        ids, mask = (t.to(device) for t in pad(chunk, tokenizer.pad_token_id, side="left"))
        work_tokens = int(mask.sum()) + batch_size * args.new_tokens
        times: dict[str, list[float]] = {label: [] for label, _ in contenders}
        first: dict[str, float] = {}
        with inference_autocast():
            for label, run in contenders:  # warm-up at this very shape: compilation, graph capture
                first[label] = timed(run, ids, mask, 0)
            for round_index in range(args.rounds):
                for label, run in contenders:
                    times[label].append(timed(run, ids, mask, round_index + 1))
        base = statistics.median(times["model.generate"]) if "model.generate" in times else None
        for label, seconds in times.items():
            seconds = statistics.median(seconds)
            flops = 2 * n * work_tokens / seconds
            ratio = f"{base / seconds:7.2f}x" if base else ""
            print(f"{batch_size:>6} {label:<22}{batch_size * args.new_tokens / seconds:10.1f}"
                  f"{1000 * seconds / args.new_tokens:9.2f}{flops / 1e9:9.1f}{flops / peak:9.1%}"
                  f"{first[label]:10.1f}s{ratio}", flush=True)
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    else:
        print(f"peak RSS {harness.own_peak_rss_mib():.0f} MiB (all contenders in this process)")


if __name__ == "__main__":
    main()
