"""Tokenisation and batching.

Conventions (each one is a way PPO silently fails when wrong):
- every SFT target and RM response ends with exactly one EOS, and PAD is never EOS;
- training batches are right-padded, generation batches left-padded;
- prompts are rendered with the tokenizer's chat template, so multi-turn history keeps its roles.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from rlhf.data.readers import FIRST_LOCATIONS, first_locations
from rlhf.data.records import Comparison, Conversation, DataError, Demonstration, Prompt

logger = logging.getLogger(__name__)


def encode_prompt(tokenizer, conversation: Conversation) -> list[int]:
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, text: str) -> list[int]:
    """Response tokens followed by exactly one EOS."""
    ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
    while ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    return ids + [tokenizer.eos_token_id]


class _TooLong:
    """The records of one kind longer than ``max_length``: truncated, skipped or an error
    (``on_too_long``). Each is one debug line (``-v``); :meth:`report` gives one warning for all."""

    def __init__(self, kind: str, max_length: int, on_too_long: str, origin: str = ""):
        self.kind, self.max_length, self.on_too_long = kind, max_length, on_too_long
        self.origin = f" of {origin}" if origin else ""
        self.truncated: list[str] = []

    def admits(self, length: int, source: str) -> bool:
        """True when the sequence fits, or is to be truncated; False to skip it; raises for "error"."""
        if length <= self.max_length:
            return True
        message = f"{source}: prompt + response is {length} tokens, longer than max_length {self.max_length}"
        if self.on_too_long == "error":
            raise DataError(message)
        if self.on_too_long == "truncate":
            logger.debug("truncating %s", message)
            self.truncated.append(source)
            return True
        logger.debug("dropping %s", message)
        return False

    def report(self, total: int, kept: int) -> None:
        if self.truncated:
            first = first_locations(len(self.truncated), self.truncated[:FIRST_LOCATIONS])
            logger.warning("truncated %d of %d %s%s longer than %d tokens (%s; -v lists each)",
                           len(self.truncated), total, self.kind, self.origin, self.max_length, first)
        if kept < total:
            logger.warning("dropped %d of %d %s%s longer than %d tokens", total - kept, total, self.kind,
                           self.origin, self.max_length)
        if kept == 0:
            raise DataError(f"every one of the {total} {self.kind} is longer than {self.max_length} tokens")


def truncate_pair(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Fit prompt + response into ``max_length``: the prompt loses tokens from its start (the most recent
    turns matter most) but keeps at least a quarter of the budget; the response then loses tokens from
    its end, keeping its final EOS."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    prompt_budget = max(max_length - len(response), max_length // 4)
    prompt = prompt[-prompt_budget:]
    response_budget = max_length - len(prompt)
    if len(response) > response_budget:
        response = response[:response_budget - 1] + response[-1:]
    return prompt, response


@dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 on response tokens (incl. EOS), 0 on the prompt


def encode_demonstrations(tokenizer, demos: list[Demonstration], max_length: int,
                          on_too_long: str = "skip") -> list[SFTExample]:
    examples, too_long = [], _TooLong("demonstrations", max_length, on_too_long)
    for demo in demos:
        prompt, response = encode_prompt(tokenizer, demo.prompt), encode_response(tokenizer, demo.response)
        if too_long.admits(len(prompt) + len(response), demo.source):
            prompt, response = truncate_pair(prompt, response, max_length)
            examples.append(SFTExample(prompt + response, [0] * len(prompt) + [1] * len(response)))
    too_long.report(len(demos), len(examples))
    return examples


@dataclass
class RankedExample:
    sequences: list[list[int]]  # K tokenised prompt+response sequences
    ranks: list[int]
    prompt_lengths: list[int] | None = None  # where each sequence's response starts (DPO's loss mask)
    reference_logps: list[float] | None = None  # log π_ref(y_k | x) of each response, once computed (DPO)


def encode_comparisons(tokenizer, comparisons: list[Comparison], max_length: int,
                       on_too_long: str = "skip") -> list[RankedExample]:
    examples, too_long = [], _TooLong("comparisons", max_length, on_too_long)
    for comparison in comparisons:
        prompt = encode_prompt(tokenizer, comparison.prompt)
        responses = [encode_response(tokenizer, text) for text in comparison.responses]
        if too_long.admits(len(prompt) + max(map(len, responses)), comparison.source):
            # one prompt for all K (cut for the longest response), so that it can be forwarded once
            prompt, _ = truncate_pair(prompt, max(responses, key=len), max_length)
            pairs = [truncate_pair(prompt, response, max_length) for response in responses]
            examples.append(RankedExample([kept + said for kept, said in pairs], list(comparison.ranks),
                                          [len(kept) for kept, _ in pairs]))
    too_long.report(len(comparisons), len(examples))
    return examples


def shared_prompt_shape(example: RankedExample) -> tuple[int, int]:
    """A ranked example in :func:`collate_shared_prompt`'s layout: one row, its prompt once and every
    response after it."""
    prompt = example.prompt_lengths[0]
    return 1, prompt + sum(len(seq) - prompt for seq in example.sequences)


def collate_shared_prompt(examples: list[RankedExample], pad_id: int,
                          additive: bool = False) -> dict[str, torch.Tensor]:
    """Each prompt forwarded once with its K responses after it, in one row (a reward model's scores
    depend on the prompt only through the causal prefix, so K copies of it are K − 1 wasted forwards).

    input_ids, position_ids (B, T): response k's positions continue the prompt's, as in its own
    sequence; attention_mask (B, 1, T, T) bool, True = may attend: a prompt token sees the prompt up to
    itself, a response token the prompt and its own response up to itself (padding only itself);
    score_index (B, K_max): the flat position b·T + t of each response's last token (its EOS), whose
    head output is that response's score; ranks, valid as :func:`collate_ranked`. Each score equals
    the one from the response's own sequence (tested, per model family). ``additive``: the mask as
    eager attention adds it, 0 where allowed and the float32 minimum elsewhere.

    For log-probs of the responses (DPO): label_source (B, T), for each response token the flat
    position whose output predicts it (the previous token, or the prompt's last for a response's
    first), −1 elsewhere; label_slot (B, T), the flat position of the first token of the token's
    response (its slot), −1 elsewhere; flat_index (B, K_max), each response's slot, so that a (B·T,)
    vector of per-slot sums indexed by it is laid out as :func:`collate_ranked`'s; with the examples'
    reference log-probs, reference_logps (B·T,) holding each at its response's slot.
    """
    rows, segments, positions, ends, starts = [], [], [], [], []
    for example in examples:
        length = example.prompt_lengths[0]
        prompt = example.sequences[0][:length]
        row, segment, position, first, last = list(prompt), [0] * length, list(range(length)), [], []
        for k, (sequence, start) in enumerate(zip(example.sequences, example.prompt_lengths), start=1):
            if start != length or sequence[:length] != prompt or not 0 < length < len(sequence):
                raise ValueError(f"response {k} of a ranked example has another prompt, or no prompt or no "
                                 "response token; encode_comparisons gives all K one prompt and an EOS each")
            first.append(len(row))
            row += sequence[length:]
            segment += [k] * (len(sequence) - length)
            position += range(length, len(sequence))
            last.append(len(row) - 1)
        rows.append(row)
        segments.append(segment)
        positions.append(position)
        ends.append(last)
        starts.append(first)
    input_ids, _ = pad(rows, pad_id, multiple_of=PAD_MULTIPLE)
    width = input_ids.shape[1]
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (seg, pos) in enumerate(zip(segments, positions)):
        segment[b, :len(seg)] = torch.tensor(seg)
        position_ids[b, :len(pos)] = torch.tensor(pos)
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding sees itself: no row without a key
    k_max = max(len(e.sequences) for e in examples)
    ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
    valid = torch.zeros((len(examples), k_max), dtype=torch.bool)
    score_index = torch.zeros((len(examples), k_max), dtype=torch.long)
    for b, (example, last) in enumerate(zip(examples, ends)):
        ranks[b, :len(last)] = torch.tensor(example.ranks)
        valid[b, :len(last)] = True
        score_index[b, :len(last)] = b * width + torch.tensor(last)
    mask = allowed.unsqueeze(1)
    if additive:
        mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
             "score_index": score_index, "ranks": ranks, "valid": valid}
    batch.update(_response_labels(examples, segment, starts, k_max))
    return batch


def _response_labels(examples: list[RankedExample], segment: torch.Tensor, starts: list[list[int]],
                     k_max: int) -> dict[str, torch.Tensor]:
    """label_source, label_slot, flat_index (and reference_logps) of :func:`collate_shared_prompt`;
    ``starts``: the row position of each response's first token."""
    flat = torch.arange(segment.numel()).view_as(segment)
    width = segment.shape[1]
    flat_index = torch.zeros((len(examples), k_max), dtype=torch.long)
    first = torch.zeros_like(segment, dtype=torch.bool)  # a response's first token
    for b, positions in enumerate(starts):
        flat_index[b, :len(positions)] = b * width + torch.tensor(positions)
        first[b, positions] = True
    response = segment > 0
    prompt_end = flat[:, :1] + torch.tensor([e.prompt_lengths[0] - 1 for e in examples]).unsqueeze(1)
    label_source = torch.where(first, prompt_end, flat - 1).masked_fill(~response, -1)
    slot_start = torch.where(first, flat, torch.zeros_like(flat)).cummax(dim=1).values  # its response's first token
    label_slot = slot_start.masked_fill(~response, -1)
    labels = {"label_source": label_source, "label_slot": label_slot, "flat_index": flat_index}
    if all(e.reference_logps is not None for e in examples):
        reference = torch.zeros(segment.numel())
        for b, example in enumerate(examples):
            reference[flat_index[b, :len(example.sequences)]] = torch.tensor(example.reference_logps)
        labels["reference_logps"] = reference
    return labels


def encode_prompts(tokenizer, prompts: list[Prompt], max_prompt_length: int, on_too_long: str = "skip",
                   origin: str = "") -> list[tuple[list[int], Conversation]]:
    """The prompts that fit (or are truncated to fit), each as (token ids, its conversation): the
    conversation is what a reward model with another tokenizer re-renders. ``origin`` (a file)
    is named in the warning about prompts too long."""
    encoded, too_long = [], _TooLong("prompts", max_prompt_length, on_too_long, origin)
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt.prompt)
        if too_long.admits(len(ids), prompt.source):
            encoded.append((ids[-max_prompt_length:], prompt.prompt))
    too_long.report(len(prompts), len(encoded))
    return encoded


PAD_MULTIPLE = 32  # few distinct shapes: CPU kernels are (re)planned per shape, ~25% cost when every batch differs


def pad(sequences: list[list[int]], pad_id: int, side: str = "right",
        multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids → (input_ids, attention_mask), both (B, W), W = max length rounded up to ``multiple_of``."""
    width = -(-max(map(len, sequences)) // multiple_of) * multiple_of
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def collate_sft(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = pad([e.input_ids for e in examples], pad_id, multiple_of=PAD_MULTIPLE)
    loss_mask, _ = pad([e.loss_mask for e in examples], 0, multiple_of=PAD_MULTIPLE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_ranked(examples: list[RankedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """All K responses of all prompts in one flat batch, so each response is forwarded once.

    input_ids/attention_mask: (ΣK, T); ranks/valid/flat_index: (B, K_max), where
    flat_index[b, k] is the row of response k of prompt b (0 where not valid). With the examples'
    prompt lengths, loss_mask (ΣK, T) marks each row's response tokens; with their reference
    log-probs, reference_logps (ΣK,).
    """
    input_ids, attention_mask = pad([seq for e in examples for seq in e.sequences], pad_id,
                                    multiple_of=PAD_MULTIPLE)
    k_max = max(len(e.sequences) for e in examples)
    ranks = torch.zeros((len(examples), k_max), dtype=torch.long)
    valid = torch.zeros((len(examples), k_max), dtype=torch.bool)
    flat_index = torch.zeros((len(examples), k_max), dtype=torch.long)
    row = 0
    for b, example in enumerate(examples):
        k = len(example.sequences)
        ranks[b, :k] = torch.tensor(example.ranks)
        valid[b, :k] = True
        flat_index[b, :k] = torch.arange(row, row + k)
        row += k
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "ranks": ranks, "valid": valid,
             "flat_index": flat_index}
    if all(e.prompt_lengths is not None for e in examples):
        lengths = [(start, len(seq)) for e in examples for start, seq in zip(e.prompt_lengths, e.sequences)]
        batch["loss_mask"] = torch.zeros_like(attention_mask)
        for row, (start, end) in enumerate(lengths):
            batch["loss_mask"][row, start:end] = 1
    if all(e.reference_logps is not None for e in examples):
        batch["reference_logps"] = torch.tensor([value for e in examples for value in e.reference_logps])
    return batch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Shuffled batches of indices whose members have similar lengths (less padding).

    Each epoch: shuffle, cut into groups of ``group_batches`` batches, sort each group by length,
    cut into batches, shuffle the batch order. A new order per epoch, a function of the seed and the
    epoch alone (:meth:`set_epoch`), so that a resumed run sees the order an uninterrupted one saw.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_batches: int = 32):
        self.lengths, self.batch_size, self.group_batches, self.seed = lengths, batch_size, group_batches, seed
        self.generator = torch.Generator().manual_seed(seed)

    def set_epoch(self, epoch: int) -> None:
        """The order of epoch ``epoch`` (0-based, as accelerate's loaders and ``DistributedSampler`` count)."""
        self.generator.manual_seed(self.seed + epoch)

    def __len__(self) -> int:  # groups are whole batches, so only the very last batch can be short
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start:start + group], key=lambda i: self.lengths[i])
            batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        yield from (batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist())


def pack_text(tokenizer, text: str, block_size: int) -> torch.Tensor:
    """Pretraining text → (N, block_size) blocks of consecutive tokens (for ptx and perplexity)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    blocks = ids.numel() // block_size
    if blocks == 0:
        raise DataError(f"pretraining text has {ids.numel()} tokens, fewer than one block of {block_size}")
    return ids[: blocks * block_size].view(blocks, block_size)


def split_key(user_id: str | None, conversation: Conversation) -> str:
    """Records are split by user when there is one, else by a hash of the prompt."""
    if user_id is not None:
        return f"user:{user_id}"
    return "prompt:" + hashlib.sha256(repr(conversation).encode()).hexdigest()


def assign_split(key: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """Deterministic train/valid/test assignment from a hash of (seed, key)."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def sample_records(records: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of at most ``limit`` records, in their original order (all when None)."""
    if limit is None or limit >= len(records):
        return records
    keep = sorted(torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:limit].tolist())
    return [records[i] for i in keep]


def check_split_fractions(valid_fraction: float, test_fraction: float) -> None:
    """Each fraction in [0, 1) and their sum below 1, or nothing is left to train on."""
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value:g}")
    if valid_fraction + test_fraction >= 1:
        raise DataError(f"valid_fraction + test_fraction = {valid_fraction + test_fraction:g} leaves no training "
                        "data; it must be < 1")


def split_records(records: list, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, list]:
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    for record in records:
        key = split_key(record.user_id, record.prompt)
        splits[assign_split(key, seed, valid_fraction, test_fraction)].append(record)
    return splits


class PromptSampler:
    """The order PPO draws its training prompts in, as indices into the prompts of all sources
    concatenated (``sizes[i]`` prompts from source i, in that order).

    Without ``weights``: every prompt once per pass, each pass a fresh seeded permutation, so a
    source's share of the episodes is its share of the prompts. With ``weights`` (one per source,
    > 0; OpenRLHF's ``prompt_data_probs``): each draw picks source i with probability
    w_i / Σw, then that source's next prompt in its own seeded permutation, so a small source
    repeats before a large one does and the mix holds at any number of episodes.
    ``generator`` is shared with the caller and drawn from in a fixed order (resumable)."""

    def __init__(self, sizes: list[int], weights: list[float] | None, generator: torch.Generator):
        if weights is None:  # one source of all the prompts, drawn without a multinomial
            sizes = [sum(sizes)]
        elif len(weights) != len(sizes):
            raise DataError(f"prompt_weights: {len(weights)} weights for {len(sizes)} prompt files")
        self.generator = generator
        self.sizes = list(sizes)
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float)
        self.queues: list[list[int]] = [[] for _ in self.sizes]

    def draw(self) -> int:
        source = 0 if self.weights is None else int(torch.multinomial(self.weights, 1, generator=self.generator))
        if not self.queues[source]:
            self.queues[source] = torch.randperm(self.sizes[source], generator=self.generator).tolist()
        return self.starts[source] + self.queues[source].pop()

    def state(self) -> list[list[int]]:
        return [list(queue) for queue in self.queues]

    def restore(self, state: list) -> None:
        """``state`` from :meth:`state`; a flat list is one queue (a checkpoint from before weights)."""
        if not state:
            state = [[] for _ in self.queues]
        queues = [state] if isinstance(state[0], int) else state
        if len(queues) != len(self.queues):
            raise DataError(f"the checkpoint's prompt order has {len(queues)} sources, this run {len(self.queues)}: "
                            "resume with the same prompts and prompt_weights")
        self.queues = [list(queue) for queue in queues]
