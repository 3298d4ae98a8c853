"""Decoding: the eager reference sampler, and :class:`Decoder`, the fast one PPO and ``generate`` use.

:class:`Decoder` samples with a static KV cache allocated once per shape bucket (prompt rounded up
to ``prompt_bucket`` tokens, plus ``max_new_tokens``), so the decode step always sees the same
shapes: on a GPU that step is compiled with CUDA graphs (``torch.compile(mode="reduce-overhead")``),
which removes the kernel-launch cost that dominates a small model's decode. Under bf16 mixed
precision it samples in bf16 from weights refreshed by :meth:`Decoder.sync` after each optimizer
step. On a CPU those weights are oneDNN pre-packed, which halves the cost of the small-batch matrix
products that dominate decode there: a Llama-family model runs :class:`rlhf.packed.PackedLlama`, its
own forward over packed weights, any other a copy whose linear layers are packed (``BENCHMARKS.md``).

Left padding with positions from the mask, sampling by inversion (:func:`sample_tokens`) and early
stop once every row has ended are shared with :func:`sample_responses`, the plain dynamic-cache
loop kept as the eager path and as the reference the tests compare against.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Mapping

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer
from transformers.pytorch_utils import Conv1D

from rlhf.models import positions_from_mask
from rlhf.packed import PackedLinear, PackedLlama, can_pack, packed_llama_support

log = logging.getLogger(__name__)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
                  block: int = 256, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens ~ softmax(logits / T) by inversion: one uniform number per row, looked up in the
    cumulative distribution first over blocks of ``block`` tokens, then within the block found —
    a tenth of Gumbel-max's cost at batch 16 over a 49k vocabulary (which draws a number per token)
    and less than a fifth of ``torch.multinomial``'s. The uniform number and both cumulative sums
    are float64, and the pick is capped at the last token of non-zero probability, so rounding at a
    block's edge never draws an impossible token. ``uniform`` (B,) in [0, 1): each row's number,
    given instead of drawn from ``generator``. Temperature 0: argmax. logits (B, V) → tokens (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature if temperature != 1 else logits.float(), -1)
    rows, vocab = probs.shape
    if vocab % block:
        probs = torch.nn.functional.pad(probs, (0, round_up(vocab, block) - vocab))
    probs = probs.view(rows, -1, block)
    block_cdf = probs.sum(-1, dtype=torch.float64).cumsum(-1)  # (B, V / block)
    total = block_cdf[:, -1:]
    # u in [0, total): the first cumulative value above it belongs to a token of non-zero probability
    if uniform is None:
        uniform = torch.rand((rows, 1), generator=generator, device=logits.device, dtype=torch.float64)
    u = uniform.view(rows, 1).to(logits.device, torch.float64) * total
    last_block = (block_cdf < total).sum(-1, keepdim=True)  # the last block with probability in it
    chosen = torch.minimum(torch.searchsorted(block_cdf, u, right=True), last_block)  # (B, 1)
    before = torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp(min=0)), 0.0)
    within = probs.gather(1, chosen.unsqueeze(-1).expand(-1, 1, block)).squeeze(1).double().cumsum(-1)  # (B, block)
    last_token = (within < within[:, -1:]).sum(-1, keepdim=True)  # the block's last token of non-zero probability
    offset = torch.minimum(torch.searchsorted(within, u - before, right=True), last_token)
    return (chosen * block + offset).squeeze(1)


def stop_ids(eos_token_id: int | list[int] | tuple[int, ...], device) -> torch.Tensor:
    """EOS as a 1-D tensor of ids: any of them ends a response (Llama-3 lists several)."""
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


def end_rows(token: torch.Tensor, finished: torch.Tensor, eos: torch.Tensor, pad_token_id: int):
    """One decode step's bookkeeping: rows that ended earlier get PAD. token, finished (B,) →
    (token, alive: the rows this token belongs to, finished after it)."""
    token = torch.where(finished, torch.full_like(token, pad_token_id), token)
    return token, ~finished, finished | torch.isin(token, eos)


@torch.no_grad()
def sample_responses(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                     eos_token_id: int | list[int], pad_token_id: int, temperature: float = 1.0,
                     generator: torch.Generator | None = None,
                     uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager path: sample up to ``max_new_tokens`` per left-padded prompt with the model's own
    dynamic cache, stopping early once every row has emitted EOS. Returns (response_ids,
    response_mask), both (B, R): the mask covers the tokens up to and including the first EOS;
    later positions are PAD. ``uniforms`` (B, max_new_tokens): each row's own uniform number at each
    step (:func:`sample_tokens`), instead of draws from ``generator``, so that a row's tokens do not
    depend on the batch it is in."""
    eos = stop_ids(eos_token_id, prompt_ids.device)
    batch = prompt_ids.shape[0]
    positions = positions_from_mask(prompt_mask)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1]
    attention_mask = prompt_mask
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, masks = [], []
    for step in range(max_new_tokens):
        token = sample_tokens(logits, temperature, generator, uniform=None if uniforms is None else uniforms[:, step])
        token, alive, finished = end_rows(token, finished, eos, pad_token_id)
        masks.append(alive)
        tokens.append(token)
        if finished.all() or len(tokens) == max_new_tokens:
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = model(input_ids=token.unsqueeze(1), attention_mask=attention_mask, position_ids=next_position,
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_position = next_position + 1
    return torch.stack(tokens, 1), torch.stack(masks, 1).long()


class _CastingLayer(StaticLayer):
    """A static cache layer that stores keys in the values' dtype: under autocast, rotary embeddings
    in fp32 make the keys fp32 while the values are bf16, and ``index_copy_`` needs one dtype."""

    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(key_states.to(value_states.dtype), value_states, *args, **kwargs)


class _CastingSlidingLayer(StaticSlidingWindowLayer):
    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(key_states.to(value_states.dtype), value_states, *args, **kwargs)


def static_cache(config, max_cache_len: int) -> StaticCache:
    """transformers' StaticCache for this model's layer layout, with dtype-safe layers."""
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    for layer in cache.layers:
        if type(layer) is StaticLayer:
            layer.__class__ = _CastingLayer
        elif type(layer) is StaticSlidingWindowLayer:
            layer.__class__ = _CastingSlidingLayer
    return cache


def _pack_linears(module: torch.nn.Module, batch_hint: int, dtype: torch.dtype,
                  prefix: str = "") -> dict[str, PackedLinear]:
    """Replace every plain Linear / Conv1D of ``module`` by a :class:`PackedLinear` of its weights;
    returns them by their module path."""
    packed = {}
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if type(child) in (torch.nn.Linear, Conv1D):  # not subclasses (quantised layers)
            packed[path] = PackedLinear(child, batch_hint, dtype)
            setattr(module, name, packed[path])
        else:
            packed.update(_pack_linears(child, batch_hint, dtype, path + "."))
    return packed


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) weight gathered whole — a collective, every process calls it — or the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` as a plain HF model: LoRA adapters merged into it, or — for a model seen
    without its adapters (:class:`~rlhf.models.lora.WithoutAdapters`) — its backbone alone; an
    FSDP2-sharded model gathered whole (a collective)."""
    from rlhf.models.lora import WithoutAdapters, peft_of

    if is_sharded(model):
        from torch.distributed.fsdp import FSDPModule

        plain_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
        state = {name: whole(tensor).detach().clone() for name, tensor in model.state_dict().items()}
        duplicate = plain_class(copy.deepcopy(model.config))
        duplicate.load_state_dict(state)
        return duplicate.to(next(model.parameters()).device)
    duplicate = copy.deepcopy(model)
    if isinstance(duplicate, WithoutAdapters):
        inner = peft_of(duplicate.model)
        return inner.unload() if inner is not None else duplicate.model
    inner = peft_of(duplicate)
    return inner.merge_and_unload() if inner is not None else duplicate


def source_tensors(model: torch.nn.Module) -> Mapping[str, torch.Tensor]:
    """The current weights of ``model`` under the names :func:`plain_copy` gives them. A LoRA layer's
    merged weight W + ΔW is computed when it is read, one at a time: never a second whole model."""
    from rlhf.models.lora import WithoutAdapters, peft_of

    without = isinstance(model, WithoutAdapters)
    inner = model.model if without else model
    if peft_of(inner) is None:
        return dict(inner.named_parameters(remove_duplicate=False))
    from peft.tuners.lora import LoraLayer

    values = {name.replace(".base_layer.", "."): param
              for name, param in inner.named_parameters(remove_duplicate=False) if ".lora_" not in name}
    adapted = {} if without else {f"{name}.weight": layer for name, layer in inner.named_modules()
                                  if isinstance(layer, LoraLayer) and layer.active_adapters}
    return _MergedWeights(values, adapted)


class _MergedWeights(Mapping):
    def __init__(self, values: dict[str, torch.Tensor], adapted: dict):
        self.values, self.adapted = values, adapted

    def __getitem__(self, name: str) -> torch.Tensor:
        layer = self.adapted.get(name)
        if layer is None:
            return self.values[name]
        weight = layer.base_layer.weight
        delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
        return weight + delta.to(weight.dtype)

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


_NOTED: set[str] = set()


def _note_once(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        log.warning(message)


class Decoder:
    """Fast sampling from one causal LM, with the contract of :func:`sample_responses`.

    ``dtype``: the precision to sample in — ``torch.bfloat16`` under bf16 mixed precision (an fp32
    model is then copied once into bf16 and that copy is what runs, outside autocast; call
    :meth:`sync` after the model's weights change), ``None``: the model's own.
    ``compile``: compile the decode step (``None``: on CUDA only, with CUDA graphs; on a CPU the
    measured gain is small next to a minute of compilation, see ``BENCHMARKS.md``).
    ``pack``: oneDNN pre-packed weights, in bf16 or fp32 (``None``: on a CPU where available, unless
    compiling) — for a Llama-family model :class:`~rlhf.packed.PackedLlama`'s forward (no copy of the
    model), for any other a copy with packed linear layers; without packing, a model sampled in its
    own precision runs itself, uncopied.
    ``batch_bucket``: batches are padded up to a multiple of it (repeating row 0); ``None``: when
    compiling, a smaller batch is padded to the largest this decoder has sampled (the last
    evaluation chunk reuses the step compiled for the rollouts), otherwise never.
    ``prompt_bucket``: prompts are left-padded to a multiple of it (``None``: 32 when compiling, else 1).
    """

    def __init__(self, model, dtype: torch.dtype | None = None, compile: bool | None = None,
                 pack: bool | None = None, prompt_bucket: int | None = None, batch_bucket: int | None = None):
        self.device = device = next(model.parameters()).device
        own_dtype = next(model.parameters()).dtype
        dtype = dtype or own_dtype
        cuda = device.type == "cuda"
        self.compile = cuda if compile is None else compile
        # packed weights are oneDNN tensors the compiler cannot take: compiling on a CPU (measured no
        # faster than packing, BENCHMARKS.md) decodes the copy unpacked
        if pack is None:
            pack = not cuda and not self.compile and dtype in (torch.bfloat16, torch.float32)
        self.pack = pack
        if self.pack and not can_pack(dtype):
            _note_once(f"decode: oneDNN weight packing ({dtype}) is unavailable in this torch build; "
                       "plain linear layers instead")
            self.pack = False
        # packing replaces the linear layers, so it works on a copy; and a sharded (FSDP2) model is
        # sampled from a whole copy on every process: a forward of the sharded model is a collective,
        # and processes whose rows end early would stop calling it
        self.copied = dtype != own_dtype or is_sharded(model) or self.pack
        self.prompt_bucket = prompt_bucket or (32 if self.compile else 1)
        self.batch_bucket, self._largest_batch = batch_bucket, 0
        self.model = model
        self.source = model
        self._packed: dict[str, PackedLinear] = {}
        self._params: dict[str, torch.Tensor] = {}
        self._caches: dict[tuple[int, int], StaticCache | tuple[torch.Tensor, torch.Tensor]] = {}
        # a Llama-family model packed on a CPU runs PackedLlama's forward: no HF copy at all
        self.packed_llama: PackedLlama | None = None
        if self.pack and not cuda:
            values = source_tensors(model)
            why_not = packed_llama_support(model, values)
            if why_not is None:
                self.packed_llama = PackedLlama(model, values, dtype, batch_bucket or 16, whole=whole)
                self._step = self._decode_step
                self._graphs = False
                return
            log.info("decode: %s: sampled through the HF forward with packed linear layers", why_not)
        if self.copied:  # a plain copy: LoRA adapters merged (or, for PPO's reference, left out)
            self.model = plain_copy(model).to(dtype).eval().requires_grad_(False)
            for param in self.model.parameters():
                param.grad = None  # a copy taken after a backward pass would carry the gradients
            if getattr(self.model.config, "_attn_implementation", None) == "eager":
                # eager attention, which trains faster on a CPU, is slower for one-token queries
                with contextlib.suppress(ValueError, ImportError):  # a model without sdpa keeps eager
                    self.model.set_attn_implementation("sdpa")
            if self.pack:
                self._packed = _pack_linears(self.model, batch_bucket or 16, dtype)
            # what the packed layers do not hold (embeddings, norms, a tied input embedding), by name
            self._params = dict(self.model.named_parameters())
        self._step = self._decode_step
        if self.compile:
            mode = "reduce-overhead" if cuda else "default"
            self._step = torch.compile(self._decode_step, mode=mode, dynamic=False)
        self._graphs = cuda and self.compile

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the model's current weights into the sampling copy (in place: compiled steps and
        CUDA graphs stay valid). Nothing to do when the model itself is sampled from."""
        if not self.copied:
            return
        values = source_tensors(self.source)
        if self.packed_llama is not None:
            self.packed_llama.load(values, whole)
            return
        for name, param in self._params.items():
            param.copy_(whole(values[name]))
        for path, module in self._packed.items():
            bias = values.get(f"{path}.bias")
            module.load(whole(values[f"{path}.weight"]), None if bias is None else whole(bias))

    def _cache(self, batch: int, length: int) -> StaticCache | tuple[torch.Tensor, torch.Tensor]:
        key = (batch, length)
        if key not in self._caches:
            if len(self._caches) >= 4:  # a few buckets at most: drop the oldest
                self._caches.pop(next(iter(self._caches)))
            if self.packed_llama is not None:  # every slot read is written first: no reset
                self._caches[key] = self.packed_llama.cache(batch, length)
                return self._caches[key]
            self._caches[key] = static_cache(self.model.config, length)
            if self._step is not self._decode_step and any(layer.is_sliding for layer in self._caches[key].layers):
                # transformers tracks a sliding window's fill with a Python int: one compilation per step
                _note_once("decode: sliding-window attention recompiles at every step; decoding eagerly")
                self._step = self._decode_step
        cache = self._caches[key]
        if self.packed_llama is None:
            cache.reset()
        return cache

    def _decode_step(self, token, position, attention_mask, cache):
        return self.model(input_ids=token, attention_mask=attention_mask, position_ids=position,
                          past_key_values=cache, use_cache=True).logits[:, -1].float()

    def _run_step(self, token, position, attention_mask, cache):
        if self._step is not self._decode_step:
            try:
                if self._graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                return self._step(token, position, attention_mask, cache).clone()
            except Exception as error:  # noqa: BLE001 — any compiler failure: the eager step still works
                _note_once(f"decode: torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                           "decoding eagerly")
                self._step = self._decode_step
        return self._decode_step(token, position, attention_mask, cache)

    @torch.no_grad()
    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
               eos_token_id: int | list[int], pad_token_id: int, temperature: float = 1.0,
               generator: torch.Generator | None = None, return_logprobs: bool = False,
               uniforms: torch.Tensor | None = None):
        """(response_ids, response_mask), both (B, R), as :func:`sample_responses` (``uniforms``
        too: each row's own numbers instead of ``generator``'s draws); with
        ``return_logprobs`` also the sampler's own log π(y_t | …) of each token at ``temperature``
        (B, R), which the scoring pass reproduces within the sampling precision."""
        rows, prompt_length = prompt_ids.shape
        if self.batch_bucket:
            batch = round_up(rows, self.batch_bucket)
        else:
            self._largest_batch = max(self._largest_batch, rows)
            batch = self._largest_batch if self._step is not self._decode_step else rows
        padded = round_up(prompt_length, self.prompt_bucket)
        ids = torch.full((batch, padded), pad_token_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
        mask = torch.zeros((batch, padded), dtype=prompt_mask.dtype, device=prompt_mask.device)
        ids[:rows, padded - prompt_length:], mask[:rows, padded - prompt_length:] = prompt_ids, prompt_mask
        ids[rows:], mask[rows:] = ids[0], mask[0]  # filler rows: a copy of row 0, dropped at the end
        length = padded + max_new_tokens
        cache = self._cache(batch, length)
        full_mask = torch.zeros((batch, length), dtype=mask.dtype, device=mask.device)
        full_mask[:, :padded] = mask
        positions = positions_from_mask(mask)
        eos = stop_ids(eos_token_id, ids.device)
        # the bf16 copy runs as it is; the model itself under the caller's autocast, if any
        with torch.autocast(ids.device.type, enabled=False) if self.copied else contextlib.nullcontext():
            if self.packed_llama is not None:
                logits = self.packed_llama(ids, positions, mask, cache, 0)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            next_position = positions[:, -1:] + 1
            finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
            tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=ids.dtype, device=ids.device)
            masks = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=ids.device)
            logprobs = torch.zeros((rows, max_new_tokens), device=ids.device) if return_logprobs else None
            check_every = 8 if ids.device.type == "cuda" else 1  # a host sync per check
            produced = 0
            for step in range(max_new_tokens):
                token = sample_tokens(logits[:rows], temperature, generator,  # the draws of the eager path
                                      uniform=None if uniforms is None else uniforms[:, step])
                if logprobs is not None:
                    scaled = logits[:rows] / (temperature or 1.0)
                    logprobs[:, step] = scaled.gather(1, token.unsqueeze(1)).squeeze(1) - scaled.logsumexp(-1)
                token = torch.cat([token, token[:1].expand(batch - rows)])  # filler rows follow row 0
                token, alive, finished = end_rows(token, finished, eos, pad_token_id)
                masks[:, step] = alive.long()
                tokens[:, step] = token
                produced = step + 1
                if produced == max_new_tokens or ((step + 1) % check_every == 0 and bool(finished[:rows].all())):
                    break
                full_mask[:, padded + step] = 1
                if self.packed_llama is not None:
                    logits = self.packed_llama(token.unsqueeze(1), next_position, full_mask, cache, padded + step)
                else:
                    logits = self._run_step(token.unsqueeze(1), next_position, full_mask, cache)
                next_position = next_position + 1
        tokens, masks = tokens[:rows, :produced], masks[:rows, :produced]
        ended = masks.sum(0) > 0  # trailing steps where every row had already ended (checked late)
        keep = int(ended.nonzero().max()) + 1 if bool(ended.any()) else 1
        if logprobs is not None:
            return tokens[:, :keep], masks[:, :keep], logprobs[:, :keep] * masks[:, :keep]
        return tokens[:, :keep], masks[:, :keep]
