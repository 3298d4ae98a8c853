"""Reward-model throughput: this project's `train_reward` against TRL's `RewardTrainer`, in one run.

    python benchmarks/reward.py --model smollm2-135m --k 2 --steps 12 --rounds 2
    python benchmarks/reward.py --model smollm2-135m --k 4 --steps 12 --rounds 2

K = 2: HH-harmless chosen/rejected pairs. K = 4: four of the paper's released TruthfulQA answers
per question, ranked by the paper's true + informative scores. This project forwards each of a
prompt's K responses once and takes all K·(K−1)/2 pairs from them; TRL takes pairs, so a K = 4
ranking becomes 6 pairs (12 forwards). Both get the same comparisons per optimizer step
(TRL batch = prompts × pairs per prompt). Rate = comparisons (pairs) per second; model FLOP/s =
6 · N · real tokens forwarded per second.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

DATA = harness.ROOT.parent / "shared" / "data"


def rankings(k: int, count: int) -> list[tuple[list, list[str]]]:
    """(prompt conversation, K responses best first) × count."""
    if k == 2:
        from rlhf.data.readers import read_comparisons

        comparisons = read_comparisons(DATA / "hh-rlhf-harmless" / "pairs.jsonl.gz", skip_invalid=True)[:count]
        return [(c.prompt, [c.responses[c.ranks.index(1)], c.responses[c.ranks.index(2)]]) for c in comparisons]
    answers = defaultdict(list)
    with open(DATA / "instructgpt-samples" / "truthful_qa_samples.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["answer"].strip():
                answers[row["question"]].append((float(row["true"] or 0) + float(row["info"] or 0), row["answer"]))
    result = []
    for question, scored in answers.items():
        for start in range(0, len(scored) - k + 1, k):
            group = sorted(scored[start:start + k], key=lambda pair: -pair[0])
            result.append(([{"role": "user", "content": question}], [text for _, text in group]))
    return result[:count]


def write_data(folder: Path, k: int, count: int) -> None:
    from rlhf.outputs import write_jsonl

    data = rankings(k, count)
    write_jsonl(folder / "ours.jsonl", [{"prompt": prompt, "responses": [{"text": t, "rank": r + 1}
                                                                         for r, t in enumerate(texts)]}
                                        for prompt, texts in data])
    write_jsonl(folder / "trl.jsonl", [{"prompt": prompt, "chosen": [{"role": "assistant", "content": texts[i]}],
                                        "rejected": [{"role": "assistant", "content": texts[j]}]}
                                       for prompt, texts in data for i, j in combinations(range(k), 2)])


def worker_ours(args) -> dict:
    from transformers import AutoModelForSequenceClassification

    from rlhf.config import RewardConfig
    from rlhf.train.reward import train_reward

    metrics_file = Path(args.data) / f"metrics-{time.time_ns()}.jsonl"
    config = RewardConfig(model=args.model, data=[str(Path(args.data) / "ours.jsonl")], max_length=args.max_length,
                          gradient_checkpointing=args.checkpointing == "on", batch_size=args.prompts_per_step,
                          max_steps=args.steps, valid_fraction=0.0,
                          mixed_precision="bf16", metrics_file=str(metrics_file), output_dir=tempfile.mkdtemp())
    train_reward(config)
    prompts_per_s = harness.metrics_rows(metrics_file, "reward/prompts_per_s")[-1]
    pairs_per_prompt = args.k * (args.k - 1) // 2
    tokens_per_prompt = _mean_tokens_per_prompt(Path(args.data) / "ours.jsonl", args.model, args.steps
                                                * args.prompts_per_step)
    n = harness.matmul_params(AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1))
    return {"rate": prompts_per_s * pairs_per_prompt, "unit": "comparisons/s",
            "model_flops_per_s": 6 * n * prompts_per_s * tokens_per_prompt}


def _mean_tokens_per_prompt(path: Path, model: str, count: int) -> float:
    """Real tokens forwarded per ranking (each response once, with its prompt)."""
    from rlhf.data.collate import encode_comparisons
    from rlhf.data.readers import read_comparisons
    from rlhf.models import load_tokenizer

    examples = encode_comparisons(load_tokenizer(model), read_comparisons(path)[:count], 10**6)
    return sum(sum(map(len, e.sequences)) for e in examples) / len(examples)


def worker_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs_per_step = args.prompts_per_step * args.k * (args.k - 1) // 2
    dataset = load_dataset("json", data_files=str(Path(args.data) / "trl.jsonl"), split="train")
    config = RewardConfig(output_dir=tempfile.mkdtemp(), gradient_checkpointing=args.checkpointing != "off",
                          per_device_train_batch_size=pairs_per_step,
                          max_steps=args.steps, learning_rate=9e-6, bf16=True, use_cpu=True,
                          max_length=args.max_length, logging_steps=10_000, save_strategy="no", report_to=[], seed=0,
                          dataloader_num_workers=0)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    tokens, seconds = harness.train_timed(trainer)
    return {"rate": args.steps * pairs_per_step / seconds, "unit": "comparisons/s",
            "model_flops_per_s": 6 * harness.matmul_params(model) * tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=4, choices=[2, 4])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts-per-step", type=int, default=None, help="default: 8 at K = 2, 4 at K = 4")
    parser.add_argument("--max-length", type=int, default=512)
    harness.add_training_arguments(parser)
    args = parser.parse_args()
    args.prompts_per_step = args.prompts_per_step or (8 if args.k == 2 else 4)
    if args.worker:
        harness.report({"ours": worker_ours, "trl": worker_trl}[args.worker](args))
        return
    model = harness.resolve_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        write_data(Path(folder), args.k, args.steps * args.prompts_per_step)
        worker_args = ["--model", model, "--k", str(args.k), "--steps", str(args.steps), "--prompts-per-step",
                       str(args.prompts_per_step), "--max-length", str(args.max_length), "--data", folder,
                       "--checkpointing", args.checkpointing]
        peak = harness.measured_peak()
        results = harness.alternate(__file__, [("rlhf train_reward", "ours", "ours"),
                                               ("TRL RewardTrainer", "trl", "trl")], worker_args, args.rounds)
    harness.summarise(f"Reward model, {args.model}, K = {args.k}, {args.prompts_per_step} prompts "
                      f"({args.prompts_per_step * args.k * (args.k - 1) // 2} comparisons) per step, "
                      f"{args.steps} steps", results, peak, baseline="TRL RewardTrainer")


if __name__ == "__main__":
    main()
