"""The demo's levers, one stage at a time (docs/alignment.md): train SFT or a reward model with the
demo's settings and the given overrides, then print one JSON line with the held-out measures.

    python benchmarks/levers.py sft --out runs/levers/sft-2ep epochs=2
    python benchmarks/levers.py sft --out runs/levers/sft-si data=[../shared/data/self-instruct/seed_tasks.jsonl]
    python benchmarks/levers.py reward --out runs/levers/rm-600 --init runs/levers/sft-2ep max_examples=600

sft: refusal rate on the 32 harmful prompts, answer rate on the 32 ordinary ones (64 new tokens,
temperature 0.7: the preset's eval settings; one sample each), the exact mean probability on each
set that a response opens with "I'm sorry" (``harmful_refusal_opening``, ``ordinary_refusal_opening``:
free of sampling noise), per-token log-likelihood of the self-instruct test split's
references (up to SFT's max_length) — all by the pipeline's own `measure_policy` — for the
base model (``--base``) and the trained one, with every ordinary prompt's response that counted
as a refusal. reward: pair accuracy on every HH test pair (longer
ones truncated) and on the validation pairs, the refusal preference (on how many of the 32 ordinary
and 32 harmful prompts, and of the preset's benign held-out requests, it scores a canned refusal above
the base model's own response, sampled with the eval's settings: ``rlhf.eval.run.refusal_preference``,
as in eval.json), and the stage's wall time.

    python benchmarks/levers.py reward --out runs/levers/rm-contrasts --init RUN/sft \
        'full_data=[RUN/data/contrasts.jsonl]'
 Overrides are the stage's
config fields (``rlhf config sft``), layered on the ``smollm2-demo`` preset's section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SELF_INSTRUCT = "../shared/data/self-instruct/seed_tasks.jsonl"


def policy_measures(path: str, pipeline, references: list) -> dict:
    """The pipeline's evaluation of one policy (``rlhf.eval.run.measure_policy``), with a few samples."""
    from rlhf.eval.refusal import HARMFUL_PROMPTS, ORDINARY_PROMPTS, is_refusal
    from rlhf.eval.run import measure_policy

    metrics, responses, _ = measure_policy(path, pipeline, references=references)
    shown = HARMFUL_PROMPTS[:3] + ORDINARY_PROMPTS[:3]
    ordinary = dict(zip(ORDINARY_PROMPTS, responses[len(HARMFUL_PROMPTS):]))
    return {**metrics, "samples": dict(zip(shown, responses[:3] + responses[len(HARMFUL_PROMPTS):][:3])),
            "ordinary_refused": {p: r for p, r in ordinary.items() if is_refusal(r)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["sft", "reward"])
    parser.add_argument("--out", required=True, help="the stage's output folder (a new one)")
    parser.add_argument("--init", help="reward: the model to start from (default: the base model)")
    parser.add_argument("--base", action="store_true", help="sft: measure the base model too")
    parser.add_argument("overrides", nargs="*", help="field=value for the stage's config")
    args = parser.parse_intermixed_args()

    import yaml

    from rlhf.config import build_config, load_config, preset_config_path
    from rlhf.eval.run import RewardScorer, benign_prompts, held_out_references, measure_policy, refusal_preference

    pipeline = load_config("pipeline", [preset_config_path("smollm2-demo")])
    data = pipeline.data
    common = {"seed": pipeline.seed, "skip_invalid": data.skip_invalid, "valid_fraction": pipeline.valid_fraction,
              "test_fraction": pipeline.test_fraction, "output_dir": args.out}
    section = getattr(pipeline, args.stage)
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    started = time.time()
    if args.stage == "sft":
        from rlhf.train.sft import train_sft

        config = build_config(type(section), {**section.model_dump(), **common, "model": pipeline.model,
                                              "data": data.demonstrations, **overrides}, "levers sft")
        metrics = train_sft(config)
        wall = time.time() - started
        references = held_out_references([SELF_INSTRUCT], pipeline)
        result = {"stage": "sft", "overrides": overrides, "wall_time_s": round(wall),
                  "train_examples": metrics.get("train_examples"), "valid/loss": metrics.get("valid/loss"),
                  "trained": policy_measures(args.out, pipeline, references)}
        if args.base:
            result["base"] = policy_measures(pipeline.model, pipeline, references)
    else:
        from rlhf.data.collate import split_records
        from rlhf.data.readers import read_comparisons
        from rlhf.train.reward import train_reward

        config = build_config(type(section), {**section.model_dump(), **common,
                                              "model": args.init or pipeline.model, "data": data.comparisons,
                                              "normalize_data": data.demonstrations, **overrides}, "levers reward")
        metrics = train_reward(config)
        wall = time.time() - started
        from rlhf.eval.refusal import HARMFUL_PROMPTS, ORDINARY_PROMPTS

        comparisons = [c for p in data.comparisons for c in read_comparisons(p, data.skip_invalid)]
        test = split_records(comparisons, pipeline.seed, pipeline.valid_fraction, pipeline.test_fraction)["test"]
        scorer = RewardScorer(args.out)
        benign = benign_prompts(pipeline)
        fixed = HARMFUL_PROMPTS + ORDINARY_PROMPTS
        _, base_responses, _ = measure_policy(pipeline.model, pipeline, benign=benign)
        result = {"stage": "reward", "overrides": overrides, "init": config.model, "wall_time_s": round(wall),
                  "train_prompts": metrics.get("train_prompts"), "valid/accuracy": metrics.get("valid/accuracy"),
                  "test": scorer.accuracy(test, config.max_length),
                  "refusal_preference": refusal_preference(scorer, dict(zip(fixed, base_responses)), benign,
                                                           base_responses[len(fixed):])}
    print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
