"""rlhf: the InstructGPT recipe (SFT → reward model → PPO-ptx) on PyTorch, transformers and accelerate."""

__version__ = "0.1.0"
