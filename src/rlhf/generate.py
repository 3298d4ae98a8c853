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


def prompt_uniforms(seed: int, prompts: int, max_new_tokens: int) -> torch.Tensor:
    """The uniform numbers :func:`generate` samples with: row i is prompt i's, one per new token,
    (prompts, max_new_tokens) float64, the same for every batch size and every model."""
    return torch.rand((prompts, max_new_tokens), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def generate(model_name: str, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.7,
             seed: int = 0, model=None, tokenizer=None, batch_size: int = 16,
             decoder: Decoder | None = None) -> list[str]:
    """One response per prompt (rendered with the chat template), in prompt order. Pass the
    ``decoder`` of an earlier call to sample the same model again without another bf16 copy.

    Prompt i is sampled with its own uniform numbers (:func:`prompt_uniforms`): its response does
    not depend on ``batch_size`` or on the other prompts, and two models given the same prompts and
    seed draw with the same numbers (common random numbers: the difference between their samples
    is the models', not the draws'). In bf16 another batch's shapes can still round a logit
    differently and flip a draw that falls within rounding of a token's edge. Prompts are batched in
    order of length, so that a batch's left padding is small."""
    tokenizer = tokenizer or load_tokenizer(model_name)
    decoder = decoder or sampling_decoder(model or load_causal_lm(model_name, tokenizer=tokenizer))
    eos_ids = response_stop_ids(tokenizer, decoder.model)  # a copy keeps the generation config
    uniforms = prompt_uniforms(seed, len(prompts), max_new_tokens).to(decoder.device)
    encoded = [encode_prompt(tokenizer, as_conversation(p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    responses: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad([encoded[i] for i in rows], tokenizer.pad_token_id, side="left")
        ids, mask = ids.to(decoder.device), mask.to(decoder.device)
        with inference_autocast():
            response_ids, response_mask = decoder.sample(ids, mask, max_new_tokens, eos_ids, tokenizer.pad_token_id,
                                                         temperature, uniforms=uniforms[rows])
        for i, row, row_mask in zip(rows, response_ids, response_mask):
            responses[i] = tokenizer.decode(row[row_mask.bool()], skip_special_tokens=True).strip()
    return responses
