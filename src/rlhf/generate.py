"""Sampling from any stage's checkpoint with the same decoder PPO's rollouts use."""

from __future__ import annotations

import torch

from rlhf.data.collate import encode_prompt, pad
from rlhf.data.records import as_conversation
from rlhf.decode import Decoder
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.rollout import response_stop_ids
from rlhf.train.common import inference_autocast, inference_dtype


def sampling_decoder(model) -> Decoder:
    """The decoder ``generate`` samples ``model`` with: bf16 (a packed copy on a CPU) where fast."""
    return Decoder(model.eval(), inference_dtype())


def generate(model_name: str, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.7,
             seed: int = 0, model=None, tokenizer=None, batch_size: int = 16,
             decoder: Decoder | None = None) -> list[str]:
    """One response per prompt (rendered with the chat template), in prompt order. Pass the
    ``decoder`` of an earlier call to sample the same model again without another bf16 copy."""
    tokenizer = tokenizer or load_tokenizer(model_name)
    decoder = decoder or sampling_decoder(model or load_causal_lm(model_name, tokenizer=tokenizer))
    eos_ids = response_stop_ids(tokenizer, decoder.model)  # a copy keeps the generation config
    generator = torch.Generator(device=decoder.device).manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), batch_size):
        chunk = [encode_prompt(tokenizer, as_conversation(p)) for p in prompts[start:start + batch_size]]
        ids, mask = pad(chunk, tokenizer.pad_token_id, side="left")
        ids, mask = ids.to(decoder.device), mask.to(decoder.device)
        with inference_autocast():
            response_ids, response_mask = decoder.sample(ids, mask, max_new_tokens, eos_ids, tokenizer.pad_token_id,
                                                         temperature, generator)
        for row, row_mask in zip(response_ids, response_mask):
            responses.append(tokenizer.decode(row[row_mask.bool()], skip_special_tokens=True).strip())
    return responses
