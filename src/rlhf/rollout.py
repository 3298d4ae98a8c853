"""The rollout, whole: sample from the policy, score with policy, reference, value and reward
model, and hand optimisation one typed :class:`RolloutBatch` (``train/ppo.py`` keeps the update)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.data.collate import encode_prompt, encode_response, pad
from rlhf.decode import Decoder, sample_responses, stop_ids
from rlhf.losses import token_logprobs, token_logprobs_and_entropy
from rlhf.models import positions_from_mask, sequence_scores


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


# a forward's fixed cost on a CPU, in tokens of work: the per-call dispatch of every block and
# autocast's cast of the weights (about 0.1 s for a 135M model, 0.8 ms a token: BENCHMARKS.md)
CPU_FORWARD_OVERHEAD_TOKENS = 128


@dataclass(frozen=True)
class RowGroup:
    """Rows of a (B, P + R) prompt + response batch forwarded together: ``rows`` (n,) and the columns
    ``start:stop`` that some row of them uses. The response still begins at column P; in the group it
    is ``stop − P`` tokens long."""

    rows: torch.Tensor
    start: int
    stop: int


def row_groups(query_mask: torch.Tensor, response_mask: torch.Tensor,
               overhead_tokens: int | None = None) -> list[RowGroup]:
    """Split a batch of left-padded prompts (B, P) and right-padded responses (B, R) into groups of
    rows, each cut to the columns its rows use, so that the forwards over them pad little.

    A group of n rows costs n · (its longest prompt + its longest response) tokens plus
    ``overhead_tokens`` for its forward. The rows are sorted by prompt length, and dynamic
    programming finds the split of that order into consecutive groups of least total cost (O(B²)).
    ``overhead_tokens=None``: one group of every row, in the batch's order, cut to the columns any
    row uses (what a GPU wants: few, large forwards; and what several processes need, which must
    run as many forwards as each other)."""
    width = query_mask.shape[1]
    prompt = query_mask.sum(1).long().clamp(min=1).tolist()  # a prompt of no token still has its column
    response = response_mask.sum(1).long().tolist()
    if not prompt:  # no rows: the layout as given
        return [RowGroup(torch.arange(0, device=query_mask.device), 0, width + response_mask.shape[1])]
    order = sorted(range(len(prompt)), key=lambda i: (-prompt[i], -response[i]))
    if overhead_tokens is None:
        cuts = [0, len(order)]
    else:  # best[j]: the least cost of order[:j]; after[j]: where its last group starts
        best, after = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
        for j in range(1, len(order) + 1):
            longest = 0
            for i in range(j - 1, -1, -1):  # the group order[i:j]: its longest prompt is order[i]'s
                longest = max(longest, response[order[i]])
                cost = best[i] + (j - i) * (prompt[order[i]] + longest) + overhead_tokens
                if cost < best[j]:
                    best[j], after[j] = cost, i
        cuts, j = [len(order)], len(order)
        while j:
            j = after[j]
            cuts.append(j)
        cuts.reverse()
    if len(cuts) == 2:  # one group: every row, in the batch's order
        order = list(range(len(order)))
    groups = []
    for i, j in zip(cuts, cuts[1:]):
        rows = order[i:j]
        groups.append(RowGroup(torch.tensor(rows, device=query_mask.device), width - max(prompt[r] for r in rows),
                               width + max(response[r] for r in rows)))
    return groups


def forward_by_groups(groups: list[RowGroup] | None, columns: int, response_length: int, forward):
    """Run ``forward(rows, start, stop)`` on each group (None: one group of every row and all
    ``columns``, the layout as given), whose outputs are tensors of its n rows
    over its ``stop − P`` response positions ((n, R_g, ...)) or one number per row ((n,)), and lay
    them out as the whole batch's (B, R, ...) or (B,), zero past each group's responses, rows in the
    batch's order. One group (every row) is forwarded as the batch is, its outputs neither copied
    nor reordered."""
    if groups is None or len(groups) == 1:
        start, stop = (0, columns) if groups is None else (groups[0].start, groups[0].stop)
        return tuple(_pad_responses(t, response_length) for t in forward(slice(None), start, stop))
    parts, rows = [], []
    for group in groups:
        parts.append([_pad_responses(t, response_length) for t in forward(group.rows, group.start, group.stop)])
        rows.append(group.rows)
    inverse = torch.argsort(torch.cat(rows))
    return tuple(torch.cat(ts)[inverse] for ts in zip(*parts))


def _pad_responses(t: torch.Tensor, response_length: int) -> torch.Tensor:
    """(n, R_g, ...) → (n, R, ...) with zeros after R_g; (n,) as it is."""
    if t.dim() < 2 or t.shape[1] == response_length:
        return t
    return torch.nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, response_length - t.shape[1]])


def response_logprobs(model, input_ids, attention_mask, response_ids, temperature: float,
                      groups: list[RowGroup] | None = None, with_entropy: bool = False):
    """log π(y_t | x, y_<t) for each response token (B, R), and with ``with_entropy`` the entropy of
    π(· | x, y_<t) at each (B, R), from the same log-softmax and without gradients (else None).

    input_ids/attention_mask (B, P + R) hold prompt + response; response_ids (B, R). Each group of
    ``groups`` (:func:`row_groups`; default: one of every row) is forwarded on its own columns, and
    only its last R_g + 1 positions go through the LM head (the prompt's logits are never needed,
    and no group's (n, R_g, V) logits outlive its forward).
    """
    response_length = response_ids.shape[1]
    prompt_length = input_ids.shape[1] - response_length

    def forward(rows, start, stop):
        ids, mask = input_ids[rows, start:stop], attention_mask[rows, start:stop]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                       logits_to_keep=stop - prompt_length + 1).logits[:, :-1]
        tokens = response_ids[rows, :stop - prompt_length]
        if with_entropy:
            return token_logprobs_and_entropy(logits, tokens, temperature)
        return (token_logprobs(logits, tokens, temperature),)

    outputs = forward_by_groups(groups, input_ids.shape[1], response_length, forward)
    return outputs if with_entropy else (outputs[0], None)


def response_values(value_model, input_ids, attention_mask, prompt_length: int,
                    groups: list[RowGroup] | None = None) -> torch.Tensor:
    """V(x, y_<t) for each response token t, read at the position before it: (B, R)."""
    response_length = input_ids.shape[1] - prompt_length

    def forward(rows, start, stop):
        mask = attention_mask[rows, start:stop]
        values = value_model(input_ids=input_ids[rows, start:stop], attention_mask=mask,
                             position_ids=positions_from_mask(mask))
        return (values[:, prompt_length - start - 1:-1],)

    return forward_by_groups(groups, input_ids.shape[1], response_length, forward)[0]


def grouping_overhead(device: torch.device) -> int | None:
    """:func:`row_groups`' cost of one more forward on ``device``: on a CPU, where time follows the
    tokens, many tight groups; elsewhere one group (a GPU's forwards of a small model are bound by
    kernel launches, not tokens: not measured here)."""
    return CPU_FORWARD_OVERHEAD_TOKENS if device.type == "cpu" else None


def response_stop_ids(tokenizer, model) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation_config EOS
    (an int or a list, as Llama-3 has)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return list(dict.fromkeys(i for i in ids + configured if i is not None and i != tokenizer.pad_token_id))


class RolloutEngine:
    """Sampling and scoring for PPO, each model forwarded once per batch.

    ``policy`` and ``reference`` sample (through a :class:`~rlhf.decode.Decoder` each, or the eager
    loop with ``engine="eager"``); ``value`` and ``reward_model`` are :class:`~rlhf.models.ScalarModel`
    (``value`` is None with RLOO: the values are zeros).
    ``autocast`` is the context the scoring forwards run under (the accelerator's); ``dtype`` the
    precision to sample in (bf16 under bf16 mixed precision, else ``None``). A ``reward_tokenizer``
    (one that differs from the policy's) makes the reward model read each episode re-rendered in its
    own tokens and chat template: the conversation, then the decoded response.
    """

    def __init__(self, policy, reference, value, reward_model, tokenizer, *, max_new_tokens: int,
                 temperature: float, no_eos_score: float | None, autocast, generator: torch.Generator,
                 dtype: torch.dtype | None = None, engine: str = "static", compile: bool | None = None,
                 reward_tokenizer=None, row_group_overhead: int | None = None):
        self.models = {"policy": policy, "reference": reference}
        self.value, self.reward_model, self.tokenizer = value, reward_model, tokenizer
        self.reward_tokenizer = reward_tokenizer
        self.max_new_tokens, self.temperature, self.no_eos_score = max_new_tokens, temperature, no_eos_score
        self.autocast, self.generator = autocast, generator
        self.eos_ids = response_stop_ids(tokenizer, policy)
        self.engine, self.dtype, self.compile = engine, dtype, compile
        self.row_group_overhead = row_group_overhead  # the scoring forwards' row_groups (None: one group)
        self.decoders: dict[str, Decoder] = {}

    def decoder(self, source: str) -> Decoder:
        if source not in self.decoders:  # the reference's only when evaluation first samples from it
            self.decoders[source] = Decoder(self.models[source], self.dtype, compile=self.compile)
        return self.decoders[source]

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], source: str = "policy"):
        """Left-padded prompts (B, P) and the sampled responses (B, R), with their masks."""
        model = self.models[source]
        device = next(model.parameters()).device
        pad_id = self.tokenizer.pad_token_id
        query_ids, query_mask = (t.to(device) for t in pad(prompts, pad_id, side="left"))
        with self.autocast():
            if self.engine == "eager":
                response_ids, response_mask = sample_responses(
                    model, query_ids, query_mask, self.max_new_tokens, self.eos_ids, pad_id, self.temperature,
                    self.generator)
            else:
                decoder = self.decoder(source)
                if source == "policy":
                    decoder.sync()  # the policy has changed since the last rollout
                response_ids, response_mask = decoder.sample(
                    query_ids, query_mask, self.max_new_tokens, self.eos_ids, pad_id, self.temperature, self.generator)
        return query_ids, query_mask, response_ids, response_mask

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]], conversations: list | None = None, source: str = "policy",
                score_policy: bool = True) -> RolloutBatch:
        """Sample from ``source`` and compute everything the update needs, each exactly once.
        ``conversations`` (the prompts' messages) are needed only with a ``reward_tokenizer``.

        ``score_policy=False`` leaves the policy's log-probs and the values at zero, to be filled by
        :meth:`take_policy_scores` from the update's own first forward (one minibatch)."""
        query_ids, query_mask, response_ids, response_mask = self.sample(prompts, source)
        ids, mask = torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1)
        groups = row_groups(query_mask, response_mask, self.row_group_overhead)
        with self.autocast():
            ref_logprobs, _ = response_logprobs(self.models["reference"], ids, mask, response_ids, self.temperature,
                                                groups)
            if score_policy:
                logprobs, _ = response_logprobs(self.models["policy"], ids, mask, response_ids, self.temperature,
                                                groups)
                values = torch.zeros_like(ref_logprobs) if self.value is None else \
                    response_values(self.value, ids, mask, query_ids.shape[1], groups)
            else:
                logprobs, values = torch.zeros_like(ref_logprobs), torch.zeros_like(ref_logprobs)
            scores = self.reward_scores(ids, mask, response_ids, response_mask, conversations, groups)
        ended_with_eos = (torch.isin(response_ids, stop_ids(self.eos_ids, response_ids.device))
                          & response_mask.bool()).any(1)
        if self.no_eos_score is not None:
            scores = torch.where(ended_with_eos, scores, torch.full_like(scores, self.no_eos_score))
        response_mask = response_mask.float()
        return RolloutBatch(query_ids, query_mask, response_ids, response_mask, logprobs * response_mask,
                            ref_logprobs * response_mask, values * response_mask, scores, ended_with_eos)

    def reward_scores(self, ids, mask, response_ids, response_mask, conversations,
                      groups: list[RowGroup] | None = None) -> torch.Tensor:
        """r(x, y) for each episode, (B,): read from the policy's tokens (by ``groups`` of rows) when
        the reward model shares the tokenizer, else from the episode rendered again with the reward
        model's tokenizer."""
        if self.reward_tokenizer is None:
            def forward(rows, start, stop):
                group_mask = mask[rows, start:stop]
                values = self.reward_model(ids[rows, start:stop], group_mask, positions_from_mask(group_mask))
                return (sequence_scores(values, group_mask),)

            return forward_by_groups(groups, ids.shape[1], response_ids.shape[1], forward)[0]
        if conversations is None:
            raise ValueError("a reward model with its own tokenizer needs the prompts' conversations")
        tokenizer = self.reward_tokenizer
        texts = self.tokenizer.batch_decode([row[m.bool()] for row, m in zip(response_ids, response_mask)],
                                            skip_special_tokens=True)
        sequences = [encode_prompt(tokenizer, conversation) + encode_response(tokenizer, text)
                     for conversation, text in zip(conversations, texts)]
        device = next(self.reward_model.parameters()).device
        ids, mask = (t.to(device) for t in pad(sequences, tokenizer.pad_token_id))
        return sequence_scores(self.reward_model(ids, mask), mask)

    @staticmethod
    def take_policy_scores(batch: RolloutBatch, forward: dict[str, torch.Tensor]) -> None:
        """The one-minibatch step: the update's first forward, before any weight changes, is the
        rollout policy's; its log-probs and values complete the batch (no second forward)."""
        batch.logprobs = forward["logprobs"].detach() * batch.response_mask
        if forward["values"] is not None:  # RLOO has no value model
            batch.values = forward["values"].detach() * batch.response_mask
