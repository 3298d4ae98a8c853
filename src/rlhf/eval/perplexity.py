"""Likelihoods on held-out text: the perplexity of pretraining text (exp of the mean next-token loss
over fixed blocks), the log-likelihood of human references, and the probability of a response's opening."""

from __future__ import annotations

import contextlib
import math

import torch

from rlhf.losses import response_lm_loss


def split_text(text: str, held_out_fraction: float) -> tuple[str, str]:
    """(training part, held-out part): the last ``held_out_fraction`` of the text, cut at a line break."""
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    cut = int(len(text) * (1 - held_out_fraction))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    return text[:cut], text[cut:]


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 8, autocast=None) -> float:
    """exp(mean over blocks of the per-token negative log-likelihood); blocks (N, L) of token ids."""
    model.eval()
    losses = []
    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start:start + batch_size]
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(input_ids=ids).logits
        losses.append(response_lm_loss(logits, ids, torch.ones_like(ids)).item() * ids.shape[0])
    return math.exp(sum(losses) / blocks.shape[0])


def held_out_perplexity(model, tokenizer, text_path, held_out_fraction: float = 0.1, block_size: int = 256,
                        max_tokens: int = 16384, autocast=None) -> float:
    """Perplexity on the held-out end of a pretraining text file (the part PPO-ptx never trains on)."""
    from rlhf.data.collate import pack_text
    from rlhf.data.readers import read_text

    _, held_out = split_text(read_text(text_path), held_out_fraction)
    blocks = pack_text(tokenizer, held_out, block_size)[: max(1, max_tokens // block_size)]
    return perplexity(model, blocks, autocast=autocast)


@torch.no_grad()
def reference_log_likelihood(model, tokenizer, demonstrations: list, max_length: int, batch_size: int = 8,
                             autocast=None) -> float:
    """Mean per-token log-likelihood (nats, higher = better) of human-written reference responses given
    their prompts: Σ over every reference token of log p(y_t | x, y_<t) / the number of those tokens.
    Helpfulness that the chat template and the model's own style cannot fake: a model that stopped
    following instructions gives the references less probability."""
    from rlhf.data.collate import collate_sft, encode_demonstrations

    examples = encode_demonstrations(tokenizer, demonstrations, max_length, "truncate")
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate_sft(examples[start:start + batch_size], tokenizer.pad_token_id)
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        count = int(batch["loss_mask"][:, 1:].sum())
        total -= response_lm_loss(logits, batch["input_ids"], batch["loss_mask"]).item() * count
        tokens += count
    if not tokens:
        raise ValueError("no reference tokens to score")
    return total / tokens


@torch.no_grad()
def opening_probability(model, tokenizer, prompts: list, opening: str, temperature: float, batch_size: int = 16,
                        autocast=None) -> list[float]:
    """For each prompt, the probability that a response sampled at ``temperature`` opens with
    ``opening``: Π_t softmax(logits_t / T)[o_t] over the opening's tokens o (tokenised as a response
    is) after the chat-templated prompt. The exact expectation of the 0/1 outcome that one sample
    gives, so two policies can be compared without sampling noise. The output layer is applied only
    at the opening's positions."""
    from rlhf.data.collate import encode_prompt, encode_response, pad
    from rlhf.data.records import as_conversation
    from rlhf.models import output_logits

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tail = encode_response(tokenizer, opening)[:-1]  # the opening's tokens, without the EOS
    if not tail:
        raise ValueError("opening has no tokens")
    heads = [encode_prompt(tokenizer, as_conversation(p)) for p in prompts]
    model.eval()
    probabilities = []
    for start in range(0, len(heads), batch_size):
        chunk = heads[start:start + batch_size]
        ids, mask = pad([h + tail for h in chunk], tokenizer.pad_token_id)  # right padding: positions unchanged
        # the output at position i predicts token i + 1; the opening starts at position len(head)
        rows = torch.arange(len(chunk)).repeat_interleave(len(tail))
        columns = torch.tensor([len(head) - 1 + t for head in chunk for t in range(len(tail))])
        with autocast() if autocast else contextlib.nullcontext():
            hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            logits = output_logits(model, hidden[rows, columns])  # (rows × opening tokens, V)
        steps = torch.log_softmax(logits.float() / temperature, dim=-1)
        targets = torch.tensor(tail, device=steps.device).repeat(len(chunk))[:, None]
        log_p = steps.gather(1, targets).view(len(chunk), len(tail)).sum(1)
        probabilities.extend(log_p.exp().tolist())
    return probabilities
