"""PPO throughput: this project's `train_ppo` against TRL 1.12's `PPOTrainer` (the last release
that ships it, in its own virtual environment) and current TRL's critic-free `RLOOTrainer`.

    python benchmarks/ppo.py --model smollm2-135m --episodes 64 --rounds 2
    python benchmarks/ppo.py --attention eager --no-rloo --rounds 2   # every tool's trained models on eager attention
    python benchmarks/ppo.py --peers none --rounds 2          # our rollout engines only: static vs eager
    python benchmarks/ppo.py --peers lora --rounds 2          # ours, LoRA (r = 16) against full fine-tuning
    python benchmarks/ppo.py --model .gpu/smollm2 --random-weights --peers none --batch 64 --episodes 512  # GPU

Same policy (also the frozen reference), the same reward model (a scalar head on the same base;
also the value model's initialisation), the same HH-harmless prompts (only those within
--max-prompt-length), β = 0.02, temperature 1, responses of up to --response-length tokens stopped
at EOS, 16 episodes per step, one minibatch, one PPO epoch, bf16 autocast, no ptx (TRL has none).
Rate = episodes (prompt → response → update) per second of training; model FLOP/s counts, per
episode token, 2 · N for each of the frozen forwards (reference, reward) and 6 · N for each trained
model (policy, value), plus 2 · N per sampled token: what the algorithm needs, not what it wastes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HH = harness.ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl.gz"
BATCH = 16  # episodes per step (--batch)


def write_data(folder: Path, model: str, max_prompt_length: int, count: int, random_weights: bool = False) -> str:
    """Prompts (our JSONL; TRL PPO's token ids; RLOO's conversations) and a reward-model folder;
    returns the policy's folder (``model``, or random weights built from its config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf.data.collate import encode_prompt
    from rlhf.data.readers import read_prompts
    from rlhf.models import load_tokenizer
    from rlhf.outputs import write_jsonl

    tokenizer = load_tokenizer(model)
    prompts = [p for p in read_prompts(HH, skip_invalid=True)
               if len(encode_prompt(tokenizer, p.prompt)) <= max_prompt_length][:count]
    write_jsonl(folder / "ours.jsonl", [{"prompt": p.prompt} for p in prompts])
    write_jsonl(folder / "trl.jsonl", [{"input_ids": encode_prompt(tokenizer, p.prompt)} for p in prompts])
    write_jsonl(folder / "rloo.jsonl", [{"prompt": p.prompt} for p in prompts])
    torch.manual_seed(0)
    if random_weights:
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).save_pretrained(folder / "policy")
        tokenizer.save_pretrained(folder / "policy")
        model = str(folder / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    return model


def _flops_per_episode(n: int, prompt_tokens: float, response_tokens: float) -> float:
    """Reference + reward forwards (2N each), policy + value trained (6N each) over the whole
    sequence, and sampling (2N per response token)."""
    return (2 * 2 + 2 * 6) * n * (prompt_tokens + response_tokens) + 2 * n * response_tokens


def _prompt_tokens(path: Path) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sum(len(r["input_ids"]) for r in rows) / len(rows)


def worker_ours(args) -> dict:
    from rlhf.config import PPOConfig
    from rlhf.models import load_causal_lm
    from rlhf.train.ppo import train_ppo

    data = Path(args.data)
    metrics_file = data / f"metrics-{time.time_ns()}.jsonl"
    config = PPOConfig(model=args.model, reward_model=str(data / "reward"), prompts=[str(data / "ours.jsonl")],
                       total_episodes=args.episodes, rollout_batch_size=args.batch, rollout_engine=args.engine,
                       num_minibatches=1, ppo_epochs=1,
                       max_new_tokens=args.response_length, max_prompt_length=args.max_prompt_length,
                       max_length=args.max_prompt_length + args.response_length, kl_coef=0.02, temperature=1.0,
                       ptx_coef=0.0, valid_fraction=0.0, eval_prompts=2, mixed_precision="bf16",
                       gradient_checkpointing=args.checkpointing == "on",
                       lora=({"r": args.lora, "alpha": 2 * args.lora, "base_dtype": args.lora_base}
                             if args.lora else None),
                       attn_implementation=None if args.attention == "default" else args.attention,
                       metrics_file=str(metrics_file), output_dir=tempfile.mkdtemp())
    summary = train_ppo(config)
    lengths = harness.metrics_rows(metrics_file, "rollout/response_length")
    response_tokens = sum(lengths) / len(lengths)
    n = harness.matmul_params(load_causal_lm(args.model))
    rate = summary["episodes_per_s"]
    flops = rate * _flops_per_episode(n, _prompt_tokens(data / "trl.jsonl"), response_tokens)
    rollout = harness.metrics_rows(metrics_file, "time/rollout_fraction")[1:]  # the first step compiles
    steady = harness.metrics_rows(metrics_file, "time/episodes_per_s")[1:]
    return {"rate": rate, "unit": "episodes/s", "model_flops_per_s": flops, "response_tokens": response_tokens,
            "rollout_fraction": statistics.median(rollout or [0.0]),
            "steady_rate": statistics.median(steady or [rate])}  # steps after the first: no compilation


def worker_trl_ppo(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    data = Path(args.data)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    # as ours: the policy, value model and reference on the kernel asked for (default: TRL's own, sdpa)
    trained = {} if args.attention == "default" else {"attn_implementation": args.attention}
    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **trained)
    reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **trained)
    reward = AutoModelForSequenceClassification.from_pretrained(data / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(data / "reward", num_labels=1, **trained)
    dataset = load_dataset("json", data_files=str(data / "trl.jsonl"), split="train")
    config = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
                       gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=1,
                       total_episodes=args.episodes,
                       response_length=args.response_length, stop_token="eos", temperature=1.0, kl_coef=0.02,
                       bf16=True, use_cpu=True, num_sample_generations=0, save_strategy="no", report_to=[],
                       gradient_checkpointing=args.checkpointing != "off",
                       logging_steps=10_000, seed=0, dataloader_num_workers=0)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward, value_model=value, train_dataset=dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    rate = args.episodes / seconds
    n = harness.matmul_params(policy)  # responses counted at their full length: generously to TRL
    flops = rate * _flops_per_episode(n, _prompt_tokens(data / "trl.jsonl"), args.response_length)
    return {"rate": rate, "unit": "episodes/s", "model_flops_per_s": flops}


def worker_rloo(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    data = Path(args.data)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    trained = {} if args.attention == "default" else {"attn_implementation": args.attention}
    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **trained)
    reward = AutoModelForSequenceClassification.from_pretrained(data / "reward", num_labels=1)
    reward_tokenizer = AutoTokenizer.from_pretrained(data / "reward")
    dataset = load_dataset("json", data_files=str(data / "rloo.jsonl"), split="train")
    config = RLOOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
                        gradient_accumulation_steps=1, num_generations=2, max_steps=args.episodes // args.batch,
                        max_completion_length=args.response_length,
                        temperature=1.0, beta=0.02, num_iterations=1, bf16=True, use_cpu=True, save_strategy="no",
                        gradient_checkpointing=args.checkpointing != "off",
                        report_to=[], logging_steps=10_000, seed=0, dataloader_num_workers=0)
    trainer = RLOOTrainer(model=policy, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, reward_processing_classes=reward_tokenizer)
    _, seconds = harness.train_timed(trainer)
    rate = args.episodes / seconds
    # reference + reward forwards and the policy trained; no value model
    n = harness.matmul_params(policy)
    tokens = _prompt_tokens(data / "trl.jsonl") + args.response_length
    flops = rate * ((2 * 2 + 6) * n * tokens + 2 * n * args.response_length)
    return {"rate": rate, "unit": "episodes/s", "model_flops_per_s": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--response-length", type=int, default=64)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-rloo", action="store_true", help="leave TRL's RLOOTrainer out")
    parser.add_argument("--peers", choices=["all", "none", "lora"], default="all",
                        help="none: only our two rollout engines (static and eager); lora: ours with LoRA "
                        "against ours in full (no peer environments needed for either)")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank of policy and value (0: full fine-tuning)")
    parser.add_argument("--lora-base", choices=["fp32", "bf16"], default="fp32", help="lora.base_dtype")
    parser.add_argument("--batch", type=int, default=BATCH, help="episodes per PPO step")
    parser.add_argument("--random-weights", action="store_true", help="--model is a config folder: random weights")
    parser.add_argument("--engine", choices=["static", "eager"], default="static")
    parser.add_argument("--checkpointing", choices=["defaults", "on", "off"], default="defaults",
                        help="gradient checkpointing: each tool's default (ours off, TRL on), or the same for all")
    parser.add_argument("--attention", choices=["default", "eager", "sdpa"], default="default",
                        help="the attention kernel of every contender's policy, value model and reference (default: "
                        "each tool's own: ours eager on a CPU at <= 192 tokens, TRL's sdpa); the frozen reward model "
                        "keeps transformers' default")
    parser.add_argument("--worker", choices=["ours", "trl_ppo", "rloo"])
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        workers = {"ours": worker_ours, "trl_ppo": worker_trl_ppo, "rloo": worker_rloo}
        harness.report(workers[args.worker](args))
        return
    model = args.model if args.random_weights else harness.resolve_model(args.model)
    if args.peers == "none":
        contenders = [("rlhf train_ppo (static)", "ours", "ours"),
                      ("rlhf train_ppo (eager rollout)", "ours", "ours", ["--engine", "eager"])]
        baseline = "rlhf train_ppo (eager rollout)"
    elif args.peers == "lora":
        contenders = [("rlhf train_ppo (full)", "ours", "ours"),
                      ("rlhf train_ppo (LoRA r = 16)", "ours", "ours", ["--lora", "16"]),
                      ("rlhf train_ppo (LoRA r = 16, bf16 base)", "ours", "ours",
                       ["--lora", "16", "--lora-base", "bf16"])]
        baseline = "rlhf train_ppo (full)"
    else:
        contenders = [("rlhf train_ppo", "ours", "ours"), ("TRL 1.12 PPOTrainer", "trl112", "trl_ppo")]
        baseline = "TRL 1.12 PPOTrainer"
        if not args.no_rloo:
            contenders.append(("TRL RLOOTrainer (k = 2)", "trl", "rloo"))
    with tempfile.TemporaryDirectory() as folder:
        model = write_data(Path(folder), model, args.max_prompt_length, 4 * args.episodes, args.random_weights)
        worker_args = ["--model", model, "--episodes", str(args.episodes), "--response-length",
                       str(args.response_length), "--max-prompt-length", str(args.max_prompt_length), "--data", folder,
                       "--checkpointing", args.checkpointing, "--batch", str(args.batch),
                       "--attention", args.attention]
        import torch

        peak = harness.measured_peak(device="cuda" if torch.cuda.is_available() else None)
        results = harness.alternate(__file__, contenders, worker_args, args.rounds)
    harness.summarise(f"PPO, {args.model}, {args.batch} episodes per step, {args.episodes} episodes, responses up to "
                      f"{args.response_length} tokens", results, peak, baseline=baseline)


if __name__ == "__main__":
    main()
