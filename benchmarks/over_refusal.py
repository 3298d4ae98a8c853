"""Over-refusal of trained policies on benign held-out requests, as `rlhf pipeline`'s evaluation measures it
(docs/alignment.md, "Over-refusal beyond the fixed prompts"): the preset's ``eval.benign_prompts`` sample
(smollm2-demo: 64 TruthfulQA questions), each policy's share answered (one 32-token sample per request) and
the exact probability that a response opens with "I'm sorry", with the requests each policy most often
refuses.

    python benchmarks/over_refusal.py base=smollm2-135m sft=runs/demo/sft ppo=runs/demo/ppo
    python benchmarks/over_refusal.py --limit 128 ppo=runs/demo/ppo      # the 128 of docs/alignment.md
    python benchmarks/over_refusal.py --limit 817 ppo=runs/demo/ppo      # every TruthfulQA question
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policies", nargs="+", help="name=folder (a model folder, hub id or preset)")
    parser.add_argument("--preset", default="smollm2-demo", help="the pipeline preset whose eval settings are used")
    parser.add_argument("--limit", type=int, help="requests sampled from the file (default: the preset's)")
    parser.add_argument("--worst", type=int, default=5, help="requests listed per policy, most refused first")
    args = parser.parse_args()

    from rlhf.config import load_config, preset_config_path
    from rlhf.eval.perplexity import opening_probability
    from rlhf.eval.refusal import REFUSAL_OPENING
    from rlhf.eval.run import benign_prompts, over_refusal
    from rlhf.generate import sampling_decoder
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.train.common import inference_autocast

    overrides = [f"eval.benign_limit={args.limit}"] if args.limit else []
    config = load_config("pipeline", [preset_config_path(args.preset)], overrides)
    benign = benign_prompts(config)
    if not benign:
        parser.error(f"the {args.preset} preset sets no eval.benign_prompts")
    print(f"{len(benign)} requests from {config.eval.benign_prompts}", flush=True)
    for item in args.policies:
        name, _, path = item.partition("=")
        started = time.time()
        tokenizer = load_tokenizer(path, config.chat_template)
        model = load_causal_lm(path, tokenizer=tokenizer).eval()
        measures, _ = over_refusal(model, tokenizer, sampling_decoder(model), benign, config)
        opening = opening_probability(model, tokenizer, benign, REFUSAL_OPENING, config.eval.temperature,
                                      autocast=inference_autocast)
        worst = sorted(zip(opening, (turns[-1]["content"] for turns in benign)), reverse=True)[:args.worst]
        print(json.dumps({"policy": name, "path": path, **measures, "wall_time_s": round(time.time() - started),
                          "most_refused": [[round(p, 3), q] for p, q in worst]}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
