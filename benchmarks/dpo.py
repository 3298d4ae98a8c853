"""DPO throughput: this project's `train_dpo` against TRL's `DPOTrainer`, in one run.

    python benchmarks/dpo.py --model smollm2-135m --steps 12 --rounds 2

HH-harmless chosen/rejected pairs (those whose prompt and longer reply fit ``--max-length``), the
same pairs per optimizer step on both sides, β = 0.1, bf16 autocast, the reference log-probs
computed once before training on both sides (TRL: ``precompute_ref_log_probs=True``; its default
keeps a second model and forwards it at every step). This project forwards each prompt once with
both replies after it (the reward model's layout; ``--layouts`` adds ours with one row per reply,
as before 2026-11-27); TRL forwards prompt + chosen and prompt + rejected. Rate = comparisons per
second over the whole job: the reference pass and every training step; ours also loads the model
and saves the checkpoint inside the timed call. Model FLOP/s =
(6 · N per trained token + 2 · N per reference token) · real tokens, counted as TRL forwards them
(prompt twice) for both, so the same work gets the same FLOP count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

DATA = harness.ROOT.parent / "shared" / "data"


def write_data(folder: Path, count: int, model: str, max_length: int) -> None:
    """The first ``count`` HH pairs whose prompt + longer reply fit, in each tool's format."""
    from rlhf.data.collate import encode_prompt, encode_response
    from rlhf.data.readers import read_comparisons
    from rlhf.models import load_tokenizer
    from rlhf.outputs import write_jsonl

    tokenizer = load_tokenizer(model)
    pairs, tokens = [], 0
    for c in read_comparisons(DATA / "hh-rlhf-harmless" / "pairs.jsonl.gz", skip_invalid=True):
        chosen, rejected = c.responses[c.ranks.index(1)], c.responses[c.ranks.index(2)]
        prompt = len(encode_prompt(tokenizer, c.prompt))
        replies = [len(encode_response(tokenizer, text)) for text in (chosen, rejected)]
        if prompt + max(replies) <= max_length:
            pairs.append((c.prompt, chosen, rejected))
            tokens += 2 * prompt + sum(replies)
        if len(pairs) == count:
            break
    write_jsonl(folder / "ours.jsonl", [{"prompt": p, "responses": [{"text": a, "rank": 1}, {"text": b, "rank": 2}]}
                                        for p, a, b in pairs])
    write_jsonl(folder / "trl.jsonl", [{"prompt": p, "chosen": [{"role": "assistant", "content": a}],
                                        "rejected": [{"role": "assistant", "content": b}]} for p, a, b in pairs])
    (folder / "tokens").write_text(str(tokens / len(pairs)))  # per pair, prompt counted twice


def flops_per_s(args, model, seconds: float) -> float:
    tokens = float((Path(args.data) / "tokens").read_text()) * args.steps * args.pairs_per_step
    return (6 + 2) * harness.matmul_params(model) * tokens / seconds


def worker_ours(args) -> dict:
    from transformers import AutoModelForCausalLM

    from rlhf.config import DPOConfig
    from rlhf.train.dpo import train_dpo

    config = DPOConfig(model=args.model, data=[str(Path(args.data) / "ours.jsonl")], max_length=args.max_length,
                       gradient_checkpointing=args.checkpointing == "on", batch_size=args.pairs_per_step,
                       max_steps=args.steps, valid_fraction=0.0, test_fraction=0.0, beta=0.1, learning_rate=5e-6,
                       mixed_precision="bf16", metrics_file=str(Path(args.data) / f"m-{time.time_ns()}.jsonl"),
                       output_dir=tempfile.mkdtemp() + "/dpo")
    if args.layout == "rows":  # as before 2026-11-27: each response in its own row with its own prompt copy
        import rlhf.train.dpo as dpo
        from rlhf.data.collate import collate_ranked
        from rlhf.train.reward import ranked_shape

        dpo.shared_prompt_collate = lambda hf, pad_id, length: ((lambda b: collate_ranked(b, pad_id)), ranked_shape)
    start = time.perf_counter()
    train_dpo(config)
    seconds = time.perf_counter() - start
    return {"rate": args.steps * args.pairs_per_step / seconds, "unit": "comparisons/s",
            "model_flops_per_s": flops_per_s(args, AutoModelForCausalLM.from_pretrained(args.model), seconds)}


def worker_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(Path(args.data) / "trl.jsonl"), split="train")
    config = DPOConfig(output_dir=tempfile.mkdtemp(), gradient_checkpointing=args.checkpointing != "off",
                       per_device_train_batch_size=args.pairs_per_step, max_steps=args.steps, learning_rate=5e-6,
                       beta=0.1, bf16=True, use_cpu=True, max_length=args.max_length, precompute_ref_log_probs=True,
                       logging_steps=10_000, save_strategy="no", report_to=[], seed=0, dataloader_num_workers=0)
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    return {"rate": args.steps * args.pairs_per_step / seconds, "unit": "comparisons/s",
            "model_flops_per_s": flops_per_s(args, model, seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--peers", choices=["trl", "none"], default="trl")
    parser.add_argument("--layouts", action="store_true",
                        help="also ours with one row per response (each its own copy of the prompt)")
    parser.add_argument("--layout", choices=["shared", "rows"], default="shared", help=argparse.SUPPRESS)
    harness.add_training_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        harness.report({"ours": worker_ours, "trl": worker_trl}[args.worker](args))
        return
    model = harness.resolve_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        write_data(Path(folder), args.steps * args.pairs_per_step, model, args.max_length)
        worker_args = ["--model", model, "--steps", str(args.steps), "--pairs-per-step", str(args.pairs_per_step),
                       "--max-length", str(args.max_length), "--data", folder, "--checkpointing", args.checkpointing]
        contenders = [("rlhf train_dpo", "ours", "ours")]
        if args.layouts:
            contenders.append(("rlhf, one row per response", "ours", "ours", ["--layout", "rows"]))
        if args.peers == "trl":
            contenders.append(("TRL DPOTrainer", "trl", "trl"))
        peak = harness.measured_peak()
        results = harness.alternate(__file__, contenders, worker_args, args.rounds)
    harness.summarise(f"DPO, {args.model}, {args.pairs_per_step} pairs per step, {args.steps} steps, "
                      f"reference log-probs computed once", results, peak,
                      baseline="TRL DPOTrainer" if args.peers == "trl" else "rlhf train_dpo")


if __name__ == "__main__":
    main()
