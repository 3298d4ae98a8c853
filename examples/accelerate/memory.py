"""Which policy size fits which set-up: model states per GPU computed from the parameter count.

    python examples/accelerate/memory.py            # the table in the README ("Scaling out")
    python examples/accelerate/memory.py --gpu-gib 141 --headroom 0.7

Bytes per parameter of each model a stage holds (activations not counted: `--headroom` is the share
of the GPU's memory the states may take, the rest is left to activations and the allocator):
  trained, full fine-tuning: fp32 weights 4 + fp32 gradients 4 + Adam moments 8 = 16 (bf16 autocast
  computes in bf16 from the fp32 weights); frozen, fp32: 4; PPO's bf16 sampling copy of the policy: 2;
  LoRA: the frozen base (4 in fp32, 2 with lora.base_dtype=bf16), the adapters negligible.
SFT and the reward model hold one trained model. PPO holds the policy and the value model (trained),
the reference and the reward model (frozen) and the sampling copy; with LoRA the reference is the
policy's backbone and the reward model the value model's, so PPO holds two bases and the copy.
FSDP2 (sharding: fsdp2) divides the trained models' 16 bytes by the number of GPUs; PPO's reference,
reward model and sampling copy stay whole on every GPU.
"""

from __future__ import annotations

import argparse

SIZES = [("135M", 0.135e9), ("1B", 1e9), ("3B", 3e9), ("8B", 8e9), ("13B", 13e9), ("34B", 34e9), ("70B", 70e9)]


def gib_per_gpu(params: float, stage: str, gpus: int) -> float:
    per_param = {
        "sft": 16 / gpus,                      # SFT or the reward model, DDP when gpus == 1, FSDP2 otherwise
        "ppo": 32 / gpus + 4 + 4 + 2,          # policy + value trained; reference + reward + sampling copy whole
        "ppo-lora": 4 + 4 + 2,                 # two fp32 bases (shared with reference and reward) + the copy
        "ppo-lora-bf16": 2 + 2 + 2,
    }[stage]
    return params * per_param / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU (H100: 80)")
    parser.add_argument("--headroom", type=float, default=0.75, help="share of it the model states may take")
    args = parser.parse_args()
    budget = args.gpu_gib * args.headroom
    columns = [("SFT / RM, 1 GPU", "sft", 1), ("SFT / RM, 8 GPUs FSDP2", "sft", 8),
               ("SFT / RM, 2×8 GPUs FSDP2", "sft", 16), ("PPO, 1 GPU", "ppo", 1), ("PPO, 8 GPUs FSDP2", "ppo", 8),
               ("PPO, 2×8 GPUs FSDP2", "ppo", 16), ("PPO LoRA, 1 GPU", "ppo-lora", 1),
               ("PPO LoRA bf16 bases, 1 GPU", "ppo-lora-bf16", 1)]
    print(f"GiB of model states per GPU; ✓ where they fit in {args.headroom:.0%} of {args.gpu_gib:g} GiB\n")
    print("| policy | " + " | ".join(name for name, _, _ in columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for label, params in SIZES:
        cells = []
        for _, stage, gpus in columns:
            need = gib_per_gpu(params, stage, gpus)
            cells.append(f"{need:,.0f} {'✓' if need <= budget else '✗'}" if need >= 1 else f"{need:.1f} ✓")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
