"""The GPU benchmark: this project's stages beside a plain Hugging Face loop and `generate`, at the
same shapes, on random weights (nothing downloaded), in one process, within about 8 minutes on one
H100/H200.

    python benchmarks/gpu.py                           # SmolLM2-135M and ~1B shapes, on the GPU
    python benchmarks/gpu.py --shapes tiny --device cpu --steps 2   # a smoke run on a CPU (seconds)

On the GPU machine (``../shared/gpu/README.md``): ``source .gpu/setup.sh; python3 benchmarks/gpu.py
--out $OUT/gpu.json``. It prints, per shape: SFT tokens/s (ours, with a token budget and metrics every
`--log-every` steps; the plain loop at its best batch), reward-model comparisons/s, PPO episodes/s at
batch 64 (after the first step, whose decode compilation is reported apart), new tokens/s of our decoder
and of `generate` at batch 64, and each training rate as model FLOP/s (6·N per token) over the bf16 peak
measured on the device.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SHAPES = {  # LlamaConfig fields: SmolLM2-135M itself, a TinyLlama-like ~1.1B with SmolLM2's vocabulary
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=49152, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=0, tie_word_embeddings=True),
}
MEASURES = ("plain", "sft", "rm", "ppo", "generate", "decoder")
WORDS = ("the a model reward policy value token answer question helpful honest harmless train data batch "
         "sample update gradient loss step human label rank compare prompt response write read").split()


def tokenizer_folder(requested: str | None) -> str:
    """SmolLM2's tokenizer where ``../shared/gpu/prepare.sh`` put it (``.gpu/smollm2``), else the tiny
    preset's (materialised locally)."""
    if requested:
        return requested
    prepared = harness.ROOT / ".gpu" / "smollm2"
    if (prepared / "tokenizer.json").exists():
        return str(prepared)
    from rlhf.models.presets import resolve_model_path

    return resolve_model_path("tiny")


def build_model(shape: str, tokenizer_dir: str, folder: Path) -> Path:
    """A random-weight Llama of ``shape`` saved with the tokenizer: what every stage loads."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    fields = dict(SHAPES[shape])
    fields["vocab_size"] = max(fields["vocab_size"], len(tokenizer))
    config = LlamaConfig(**fields, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def words(count: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def write_data(folder: Path, examples: int, length: int, prompt_words: int) -> dict[str, Path]:
    """Demonstrations, K = 2 comparisons long enough to fill ``length`` tokens (truncated), and prompts."""
    from rlhf.outputs import write_jsonl

    rng = random.Random(0)
    paths = {name: folder / f"{name}.jsonl" for name in ("demonstrations", "comparisons", "prompts")}
    write_jsonl(paths["demonstrations"], [{"prompt": words(24, rng), "response": words(length, rng)}
                                          for _ in range(examples)])
    write_jsonl(paths["comparisons"], [{"prompt": words(24, rng), "chosen": words(length // 2, rng),
                                        "rejected": words(length // 2, rng)} for _ in range(examples)])
    write_jsonl(paths["prompts"], [{"prompt": words(prompt_words, rng)} for _ in range(examples)])
    return paths


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_training(model_dir: Path, batch: int, length: int, steps: int, device: str) -> float:
    """Tokens/s of the loop everybody writes: bf16 autocast, fused AdamW, labels = inputs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.startswith("cuda"))
    ids = torch.randint(3, model.config.vocab_size, (batch, length), device=device)
    started = None
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            synchronize(device)
            started = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    rate = batch * length * steps / (time.perf_counter() - started)
    del model, optimizer
    return rate


def plain_generate(model_dir: Path, batch: int, prompt: int, new: int, device: str) -> float:
    """New tokens/s of ``model.generate`` (bf16 weights, sampling, no early stop)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device)
    settings = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **{**settings, "max_new_tokens": 4, "min_new_tokens": 4})
        synchronize(device)
        started = time.perf_counter()
        model.generate(ids, **settings)
        synchronize(device)
    return batch * new / (time.perf_counter() - started)


def our_generate(model_dir: Path, batch: int, prompt: int, new: int, device: str) -> float:
    """New tokens/s of this project's decoder (the one PPO samples with), after one warm-up call."""
    from rlhf.generate import sampling_decoder
    from rlhf.models import load_causal_lm

    decoder = sampling_decoder(load_causal_lm(str(model_dir)).to(device))
    ids = torch.randint(3, decoder.model.config.vocab_size, (batch, prompt), device=device)
    mask = torch.ones_like(ids)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        decoder.sample(ids, mask, new, [], 0, 1.0, generator)  # compiles (GPU) and warms up
        synchronize(device)
        started = time.perf_counter()
        decoder.sample(ids, mask, new, [], 0, 1.0, generator)
        synchronize(device)
    return batch * new / (time.perf_counter() - started)


def our_stages(model_dir: Path, data: dict, work: Path, args, length: int) -> dict:
    from rlhf.config import PPOConfig, RewardConfig, SFTConfig
    from rlhf.train.ppo import train_ppo
    from rlhf.train.reward import train_reward
    from rlhf.train.sft import train_sft

    common = dict(mixed_precision="bf16", valid_fraction=0.0, epochs=1, on_too_long="truncate",
                  max_length=length, log_every=args.log_every, compile=args.compile, warmup_ratio=0.0)
    out = {}
    if "sft" in args.measure:
        started = time.perf_counter()
        sft = train_sft(SFTConfig(model=str(model_dir), data=[str(data["demonstrations"])], dropout=0.0,
                                  batch_size=args.sft_batch, micro_batch_tokens=args.micro_batch_tokens,
                                  max_steps=args.steps * 2, output_dir=str(work / "sft"), **common))
        out.update(sft_tokens_per_s=sft["tokens_per_s"], sft_wall_s=time.perf_counter() - started)
    if {"rm", "ppo"} & set(args.measure):  # PPO needs a reward model: one step of training when RM is not measured
        steps = args.steps * 2 if "rm" in args.measure else 1
        reward = train_reward(RewardConfig(model=str(model_dir), data=[str(data["comparisons"])],
                                           batch_size=max(1, args.sft_batch // 2),
                                           micro_batch_tokens=args.micro_batch_tokens, max_steps=steps,
                                           output_dir=str(work / "reward"), **common))
        if "rm" in args.measure:
            out["rm_comparisons_per_s"] = reward["prompts_per_s"]
    if "ppo" in args.measure:
        metrics = work / "ppo-metrics.jsonl"
        ppo = train_ppo(PPOConfig(model=str(model_dir), reward_model=str(work / "reward"),
                                  prompts=[str(data["prompts"])], ptx_coef=0.0, rollout_batch_size=args.ppo_batch,
                                  num_minibatches=1, total_episodes=args.ppo_batch * (args.ppo_steps + 1),
                                  max_new_tokens=48, max_prompt_length=128, max_length=176, eval_prompts=2,
                                  valid_fraction=0.0, mixed_precision="bf16", on_too_long="truncate",
                                  metrics_file=str(metrics), output_dir=str(work / "ppo")))
        out.update(ppo_run_episodes_per_s=ppo["episodes_per_s"], **ppo_steady_state(metrics, args.ppo_batch))
    return out


def ppo_steady_state(metrics: Path, batch: int) -> dict:
    """PPO's episodes/s once compiled: the median of the per-step rates after the first step, and the
    seconds the first steps took beyond that rate (decode compilation and CUDA-graph capture)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rates = [row["time/episodes_per_s"] for row in rows if "time/episodes_per_s" in row]
    if len(rates) < 2:
        return {"ppo_episodes_per_s": None, "ppo_warmup_s": None}
    steady = statistics.median(rates[1:])
    return {"ppo_episodes_per_s": steady, "ppo_warmup_s": sum(max(0.0, batch / r - batch / steady) for r in rates)}


def measured(name: str, fn, *args):
    """``fn(*args)``, or None when the device runs out of memory (the other figures still come)."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        print(f"  {name}: out of memory", flush=True)
        torch.cuda.empty_cache()
        return None


def ratio(a, b) -> str:
    return "–" if a is None or b is None or isinstance(a, dict) else f"{a / b:.2f}"


def show(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)  # not measured, or out of memory (printed above)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["135m", "1b"], choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each loop")
    parser.add_argument("--length", type=int, default=1024, help="sequence length of the training rows")
    parser.add_argument("--plain-batches", type=int, nargs="+", default=[16, 32],
                        help="batch sizes of the plain loop at --length (the best is the reference)")
    parser.add_argument("--sft-batch", type=int, default=32)
    parser.add_argument("--micro-batch-tokens", type=int, default=16384)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="torch.compile our training forward")
    parser.add_argument("--ppo-batch", type=int, default=64)
    parser.add_argument("--ppo-steps", type=int, default=20, help="PPO steps after the first")
    parser.add_argument("--measure", nargs="+", default=list(MEASURES), choices=MEASURES,
                        help="what to measure (default: all)")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: .gpu/smollm2, else the tiny preset's)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    device = args.device
    peak = harness.measured_peak(device=device)
    print(f"device {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}, "
          f"torch {torch.__version__}, bf16 peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    results = {"device": device, "bf16_peak_flops": peak, "shapes": {}}
    tokenizer_dir = tokenizer_folder(args.tokenizer)
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model_dir = build_model(shape, tokenizer_dir, work / "model")
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                n = harness.matmul_params(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))
            data = write_data(work, max(args.sft_batch, args.ppo_batch) * (args.steps * 2 + 2), args.length,
                              prompt_words=12 if shape == "tiny" else 80)  # ≈ 100 SmolLM2 tokens
            row = {"matmul_params": n}
            plain = {b: measured(f"plain loop, batch {b}", plain_training, model_dir, b, args.length, args.steps,
                                 device) for b in args.plain_batches} if "plain" in args.measure else {}
            row["plain_tokens_per_s"] = max((r for r in plain.values() if r is not None), default=None)
            row["plain_by_batch"] = plain
            ours = measured("our stages", our_stages, model_dir, data, work, args, args.length) or {}
            for name in ("sft_tokens_per_s", "sft_wall_s", "rm_comparisons_per_s", "ppo_episodes_per_s",
                         "ppo_warmup_s", "ppo_run_episodes_per_s"):
                row[name] = ours.get(name)
            row["generate_tokens_per_s"] = measured("generate", plain_generate, model_dir, args.ppo_batch, 128, 48,
                                                    device) if "generate" in args.measure else None
            row["decoder_tokens_per_s"] = measured("decoder", our_generate, model_dir, args.ppo_batch, 128, 48,
                                                   device) if "decoder" in args.measure else None
            for name in ("plain", "sft"):
                rate = row[f"{name}_tokens_per_s"]
                row[f"{name}_mfu"] = None if rate is None else 6 * n * rate / peak
            results["shapes"][shape] = row
            torch.cuda.empty_cache() if device.startswith("cuda") else None
        print(f"\n{shape} ({n / 1e6:.0f}M matmul parameters)")
        print(f"  SFT          {show(row['sft_tokens_per_s'], '10.0f')} tokens/s  ({show(row['sft_mfu'], '.1%')} of "
              f"peak; {ratio(row['sft_tokens_per_s'], row['plain_tokens_per_s'])}x the plain loop)")
        print(f"  plain loop   {show(row['plain_tokens_per_s'], '10.0f')} tokens/s  ({show(row['plain_mfu'], '.1%')}; "
              "by batch " + ", ".join(f"{b}: {show(r, '.0f')}" for b, r in plain.items()) + ")")
        print(f"  reward model {show(row['rm_comparisons_per_s'], '10.1f')} comparisons/s")
        print(f"  PPO          {show(row['ppo_episodes_per_s'], '10.1f')} episodes/s at batch {args.ppo_batch} once "
              f"compiled (first steps {show(row['ppo_warmup_s'], '.0f')} s longer; whole run "
              f"{show(row['ppo_run_episodes_per_s'], '.1f')} episodes/s)")
        print(f"  decoder      {show(row['decoder_tokens_per_s'], '10.0f')} new tokens/s at batch {args.ppo_batch} "
              f"({ratio(row['decoder_tokens_per_s'], row['generate_tokens_per_s'])}x generate: "
              f"{show(row['generate_tokens_per_s'], '.0f')})", flush=True)
    print("RESULT " + json.dumps(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
