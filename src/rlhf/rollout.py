"""Batched sampling with a KV cache, and the typed container where rollout meets optimisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.models import positions_from_mask


def gumbel_sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """argmax(logits/T + Gumbel noise) ~ softmax(logits/T): a third of the cost of softmax +
    multinomial over a 49k vocabulary. logits (B, V) → tokens (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1.0)
    return (logits.float() / temperature - torch.log(-torch.log(uniform))).argmax(-1)


@torch.no_grad()
def sample_responses(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                     eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to ``max_new_tokens`` per left-padded prompt, stopping early once every row has
    emitted EOS. Returns (response_ids, response_mask), both (B, R): the mask covers the tokens
    up to and including the first EOS; later positions are PAD."""
    batch = prompt_ids.shape[0]
    positions = positions_from_mask(prompt_mask)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1]
    attention_mask = prompt_mask
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, masks = [], []
    for _ in range(max_new_tokens):
        token = gumbel_sample(logits, temperature, generator)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        masks.append(~finished)
        tokens.append(token)
        finished = finished | (token == eos_token_id)
        if finished.all() or len(tokens) == max_new_tokens:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = model(input_ids=token.unsqueeze(1), attention_mask=attention_mask, position_ids=next_position,
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_position = next_position + 1
    return torch.stack(tokens, 1), torch.stack(masks, 1).long()


@dataclass
class RolloutBatch:
    """One PPO batch of B episodes; prompts left-padded to P, responses right-padded to R.

    query_ids, query_mask: (B, P); response_ids, response_mask: (B, R);
    logprobs, ref_logprobs, values, rewards, advantages, returns: (B, R) over response tokens;
    scores: (B,) reward-model scores (after any no-EOS replacement); ended_with_eos: (B,) bool.
    """

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    ended_with_eos: torch.Tensor
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __post_init__(self):
        b, r = self.response_ids.shape
        assert self.query_ids.shape[0] == b and self.query_mask.shape == self.query_ids.shape
        for name in ("response_mask", "logprobs", "ref_logprobs", "values"):
            assert getattr(self, name).shape == (b, r), f"{name}: {tuple(getattr(self, name).shape)} != {(b, r)}"
        assert self.scores.shape == (b,) and self.ended_with_eos.shape == (b,)

    def full_sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt + response as one (B, P + R) sequence and its attention mask."""
        return (torch.cat([self.query_ids, self.response_ids], 1),
                torch.cat([self.query_mask, self.response_mask], 1))

    def select(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(**{name: (None if value is None else value[index])
                               for name, value in self.__dict__.items()})
