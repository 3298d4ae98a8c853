"""Sampling from any stage's checkpoint with the same rollout code PPO uses."""

from __future__ import annotations

import torch

from rlhf.data.collate import encode_prompt, pad
from rlhf.data.records import as_conversation
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.rollout import sample_responses
from rlhf.train.common import inference_autocast


def generate(model_name: str, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.7,
             seed: int = 0, model=None, tokenizer=None, batch_size: int = 16) -> list[str]:
    """One response per prompt (rendered with the chat template), in prompt order."""
    tokenizer = tokenizer or load_tokenizer(model_name)
    model = (model or load_causal_lm(model_name)).eval()
    generator = torch.Generator().manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), batch_size):
        chunk = [encode_prompt(tokenizer, as_conversation(p)) for p in prompts[start:start + batch_size]]
        ids, mask = pad(chunk, tokenizer.pad_token_id, side="left")
        ids, mask = ids.to(model.device), mask.to(model.device)
        with inference_autocast():
            response_ids, response_mask = sample_responses(model, ids, mask, max_new_tokens, tokenizer.eos_token_id,
                                                           tokenizer.pad_token_id, temperature, generator)
        for row, row_mask in zip(response_ids, response_mask):
            responses.append(tokenizer.decode(row[row_mask.bool()], skip_special_tokens=True).strip())
    return responses
