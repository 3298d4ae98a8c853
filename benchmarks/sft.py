"""SFT throughput: this project's `train_sft` against TRL's `SFTTrainer`, alternating in one run.

    python benchmarks/sft.py --model smollm2-135m --steps 16 --rounds 2

Same model, the same HH-harmless demonstrations (only those that fit in --max-length, so nobody
truncates), batch size, learning rate and bf16 autocast. Rate = real (non-padding) tokens per
second over the training loop; model FLOP/s = 6 · N · tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HH = harness.ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"


def write_data(folder: Path, model: str, max_length: int, count: int) -> None:
    """The same demonstrations twice: the project's canonical JSONL and TRL's prompt/completion."""
    from rlhf.data.collate import encode_prompt, encode_response
    from rlhf.data.readers import read_demonstrations
    from rlhf.models import load_tokenizer
    from rlhf.outputs import write_jsonl

    tokenizer = load_tokenizer(model)
    demos = read_demonstrations(HH, skip_invalid=True)[: count * 2]
    fitting = [d for d in demos if len(encode_prompt(tokenizer, d.prompt)) + len(encode_response(tokenizer, d.response))
               <= max_length][:count]
    write_jsonl(folder / "ours.jsonl", [{"prompt": d.prompt, "response": d.response} for d in fitting])
    write_jsonl(folder / "trl.jsonl", [{"prompt": d.prompt, "completion": [{"role": "assistant",
                                                                            "content": d.response}]}
                                       for d in fitting])


def worker_ours(args) -> dict:
    from rlhf.config import SFTConfig
    from rlhf.models import load_causal_lm
    from rlhf.train.sft import train_sft

    metrics_file = Path(args.data) / f"metrics-{time.time_ns()}.jsonl"
    config = SFTConfig(model=args.model, data=[str(Path(args.data) / "ours.jsonl")], max_length=args.max_length,
                       gradient_checkpointing=args.checkpointing == "on", batch_size=args.batch_size,
                       max_steps=args.steps, epochs=1, learning_rate=2e-5,
                       warmup_ratio=0.0, dropout=0.0, valid_fraction=0.0, mixed_precision="bf16",
                       metrics_file=str(metrics_file), output_dir=tempfile.mkdtemp())
    train_sft(config)
    rate = harness.metrics_rows(metrics_file, "sft/tokens_per_s")[-1]
    n = harness.matmul_params(load_causal_lm(args.model))
    return {"rate": rate, "unit": "tokens/s", "model_flops_per_s": 6 * n * rate}


def worker_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(Path(args.data) / "trl.jsonl"), split="train")
    config = SFTConfig(output_dir=tempfile.mkdtemp(), gradient_checkpointing=args.checkpointing != "off",
                       per_device_train_batch_size=args.batch_size,
                       max_steps=args.steps, learning_rate=2e-5, bf16=True, use_cpu=True, max_length=args.max_length,
                       logging_steps=10_000, save_strategy="no", report_to=[], seed=0, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    tokens, seconds = harness.train_timed(trainer)
    rate = tokens / seconds
    return {"rate": rate, "unit": "tokens/s", "model_flops_per_s": 6 * harness.matmul_params(model) * rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    harness.add_training_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        harness.report({"ours": worker_ours, "trl": worker_trl}[args.worker](args))
        return
    model = harness.resolve_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        write_data(Path(folder), model, args.max_length, args.steps * args.batch_size)
        worker_args = ["--model", model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--max-length", str(args.max_length), "--data", folder,
                       "--checkpointing", args.checkpointing]
        peak = harness.measured_peak()
        results = harness.alternate(__file__, [("rlhf train_sft", "ours", "ours"),
                                               ("TRL SFTTrainer", "trl", "trl")], worker_args, args.rounds)
    harness.summarise(f"SFT, {args.model}, batch {args.batch_size}, {args.steps} steps, max length "
                      f"{args.max_length}", results, peak, baseline="TRL SFTTrainer")


if __name__ == "__main__":
    main()
