"""What one draw of the pipeline's evaluation samples, timed per batch size: a run's policies on its
fixed harmful and ordinary prompts and the judge's held-out dialogues (``eval.max_new_tokens``), then
the preset's benign requests (32 tokens), at the eval temperature; and the exact refusal-opening
probability over the same fixed and benign prompts (BENCHMARKS.md, "The evaluation's sampling").

    python benchmarks/eval_sampling.py runs/demo --batch-sizes 16 32 64 --given-order 16

``--given-order N`` also times batches of N in the order given (each batch its own ``generate``
call, as the evaluation sampled before prompts were batched by length). One process per run of
the script; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished pipeline run (its config.yaml, sft/, ppo/)")
    parser.add_argument("--policies", nargs="+", default=["base", "sft", "ppo"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--given-order", type=int, nargs="*", default=[], help="batch sizes to time in given order")
    args = parser.parse_args()

    import yaml

    from rlhf.config import PipelineConfig
    from rlhf.eval.refusal import HARMFUL_PROMPTS, ORDINARY_PROMPTS
    from rlhf.eval.run import benign_prompts, benign_tokens, held_out_conversations, refusal_opening
    from rlhf.generate import generate, sampling_decoder
    from rlhf.models import load_causal_lm, load_tokenizer

    run = Path(args.run_dir)
    config = PipelineConfig(**yaml.safe_load((run / "config.yaml").read_text()))
    settings = config.eval
    prompts = HARMFUL_PROMPTS + ORDINARY_PROMPTS + held_out_conversations(run, settings.judge_prompts)
    benign = benign_prompts(config)
    window = benign_tokens(config)
    print(f"{len(prompts)} prompts at {settings.max_new_tokens} tokens, {len(benign)} benign at {window}")
    for name in args.policies:
        path = config.model if name == "base" else str(run / name)
        tokenizer = load_tokenizer(path, config.chat_template)
        model = load_causal_lm(path, tokenizer=tokenizer).eval()
        decoder = sampling_decoder(model)

        def sample(texts, tokens, batch_size, given_order):
            chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)] if given_order else [texts]
            for chunk in chunks:
                generate(path, chunk, tokens, settings.temperature, seed=0, tokenizer=tokenizer,
                         batch_size=batch_size, decoder=decoder)

        for batch_size, given_order in [(b, True) for b in args.given_order] + [(b, False) for b in args.batch_sizes]:
            started = time.perf_counter()
            sample(prompts, settings.max_new_tokens, batch_size, given_order)
            sample(benign, window, batch_size, given_order)
            order = "given order" if given_order else "by length"
            print(f"{name}: batch {batch_size}, {order}: {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()  # the evaluation's measure (nothing when sampling is greedy)
        opening = refusal_opening(model, tokenizer, "all", HARMFUL_PROMPTS + ORDINARY_PROMPTS + benign, config)
        if opening:
            print(f"{name}: opening probability of {len(HARMFUL_PROMPTS + ORDINARY_PROMPTS + benign)} prompts: "
                  f"{time.perf_counter() - started:.1f} s (mean {opening['all_refusal_opening']:.4f})", flush=True)


if __name__ == "__main__":
    main()
