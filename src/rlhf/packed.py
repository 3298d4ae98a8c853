"""Sampling on a CPU from weights pre-packed by oneDNN: :class:`PackedLinear`, and
:class:`PackedLlama`, the whole forward of a Llama-family decoder over such weights.

A small model's decode step on a CPU is bound by reading its weights and by per-operation
overhead, not by arithmetic (``BENCHMARKS.md``). :class:`PackedLlama` runs the forward of Llama,
Qwen2 and Mistral-without-a-window models as transformers computes it — RMSNorm in fp32, rotary
embeddings from the model's own rotary module, attention softmax in fp32, SiLU-gated MLP — with
the q/k/v and gate/up projections fused into one packed product each, its own static KV cache
written in place, and none of the per-call mask, cache and module bookkeeping of an HF forward.
What it supports is decided from the config (:func:`packed_llama_support`); every other model is
sampled through its HF forward.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping

import torch
from transformers.pytorch_utils import Conv1D

FAMILIES = ("llama", "qwen2", "mistral")


class PackedLinear(torch.nn.Module):
    """``y = x Wᵀ + b`` with W held in oneDNN's blocked layout (bf16 or fp32, CPU), packed once per
    weight update. In bf16 a plain ``linear`` re-packs W on every call: packing halves the decode
    step's matmul time at batch 1–16, bit-identical (tested). In fp32 a plain ``linear`` is MKL's
    product, which oneDNN's packed one beats 1.1–1.6× at 4–64 rows on a CPU without bf16 (AVX2; not at 1 row),
    equal to fp32 rounding (tested)."""

    def __init__(self, linear: torch.nn.Module | None, batch_hint: int, dtype: torch.dtype = torch.bfloat16,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        """From a ``Linear`` / ``Conv1D`` layer, or (``linear=None``) from a (out, in) ``weight`` and ``bias``."""
        super().__init__()
        self.batch_hint, self.dtype = batch_hint, dtype
        self.transposed = isinstance(linear, Conv1D)  # GPT-2 stores W as (in, out)
        if linear is not None:
            weight, bias = linear.weight, linear.bias
        self.out_features = weight.shape[1 if self.transposed else 0]
        self.load(weight, bias)

    def load(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Pack new weights (after an update)."""
        weight = weight.detach().to(self.dtype)
        weight = weight.t().contiguous() if self.transposed else weight
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, self.batch_hint)
        self.bias = None if bias is None else bias.detach().to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(self.dtype)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


@functools.cache
def can_pack(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this CPU build of torch has the oneDNN ops :class:`PackedLinear` needs in ``dtype``
    (and they run)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = PackedLinear(torch.nn.Linear(8, 8), 1, dtype)
        probe(torch.zeros(1, 8))
        return True
    except (RuntimeError, AttributeError):
        return False


def _rotary_module(model: torch.nn.Module) -> torch.nn.Module | None:
    return next((module for module in model.modules() if type(module).__name__.endswith("RotaryEmbedding")), None)


def packed_llama_support(model: torch.nn.Module, names: Mapping[str, torch.Tensor]) -> str | None:
    """Why :class:`PackedLlama` cannot run ``model`` (whose plain weights are ``names``), or None."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"model type {kind!r} (packed forward: {', '.join(FAMILIES)})"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r}"
    window = getattr(config, "sliding_window", None)
    if (window is not None and getattr(config, "use_sliding_window", True)) or \
            any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "sliding-window attention"
    if getattr(config, "quantization_config", None) is not None:
        return "quantised weights"
    if _rotary_module(model) is None:
        return "no rotary embedding module"
    expected = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{part}.weight" for i in range(config.num_hidden_layers)
        for part in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                     "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    present = set(names)  # the names alone: reading a LoRA layer's weight would merge it
    missing = [name for name in expected if name not in present]
    if missing:
        return f"no weight {missing[0]}"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalised in fp32, cast back, then scaled."""
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


class PackedLlama:
    """The forward of a Llama-family causal LM for sampling on a CPU, from packed weights.

    Built from ``model``'s current weights (LoRA merged, FSDP shards gathered: ``load`` takes the
    mapping :func:`rlhf.decode.source_tensors` gives) in ``dtype``; ``load`` again after an update.
    :meth:`cache` allocates the KV cache of a (batch, length) bucket; :meth:`__call__` runs ``T``
    tokens per row written at cache slots ``[start, start + T)`` and returns the next-token logits
    of the last one. Shapes: B rows, T new tokens, S = start + T slots attended, H query heads in
    Hkv groups of G, head size d.
    """

    def __init__(self, model: torch.nn.Module, values: Mapping[str, torch.Tensor], dtype: torch.dtype,
                 batch_hint: int, whole=lambda tensor: tensor):
        config = model.config
        self.dtype, self.batch_hint = dtype, batch_hint
        self.layers = config.num_hidden_layers
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.scaling = self.head_dim ** -0.5
        self.rotary = copy.deepcopy(_rotary_module(model)).float()  # cos/sin exactly as the model makes them
        # a tied output embedding is the input one (named twice, or only once)
        head = values.get("lm_head.weight", None)
        self.tied = head is None or head is values["model.embed_tokens.weight"]
        self.load(values, whole)

    def _pack(self, values, names: list[str], whole) -> PackedLinear:
        """One packed product for the projections ``names`` side by side (their outputs concatenated)."""
        weights = [whole(values[f"{name}.weight"]).detach() for name in names]
        biases = [values.get(f"{name}.bias") for name in names]
        bias = None if all(b is None for b in biases) else torch.cat([
            whole(b).detach() if b is not None else w.new_zeros(w.shape[0])
            for w, b in zip(weights, biases, strict=True)])
        return PackedLinear(None, self.batch_hint, self.dtype, weight=torch.cat(weights), bias=bias)

    @torch.no_grad()
    def load(self, values: Mapping[str, torch.Tensor], whole=lambda tensor: tensor) -> None:
        """(Re)build every packed weight from ``values`` (plain HF names → tensors; ``whole`` gathers a
        sharded one)."""
        def plain(name):
            return whole(values[name]).detach().to(self.dtype, copy=True)

        self.embed = plain("model.embed_tokens.weight")
        self.norm = plain("model.norm.weight")
        self.blocks = []
        for i in range(self.layers):
            prefix = f"model.layers.{i}"
            attention, mlp = f"{prefix}.self_attn", f"{prefix}.mlp"
            self.blocks.append((
                plain(f"{prefix}.input_layernorm.weight"),
                self._pack(values, [f"{attention}.q_proj", f"{attention}.k_proj", f"{attention}.v_proj"], whole),
                self._pack(values, [f"{attention}.o_proj"], whole),
                plain(f"{prefix}.post_attention_layernorm.weight"),
                self._pack(values, [f"{mlp}.gate_proj", f"{mlp}.up_proj"], whole),
                self._pack(values, [f"{mlp}.down_proj"], whole),
            ))
        self.head = self._pack(values, ["model.embed_tokens" if self.tied else "lm_head"], whole)

    def cache(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys, transposed, (layers, B, Hkv, d, length) and values (layers, B, Hkv, length, d): slices
        over the first S slots that the matrix products read without a copy."""
        keys = torch.zeros((self.layers, batch, self.kv_heads, self.head_dim, length), dtype=self.dtype)
        return keys, torch.zeros((self.layers, batch, self.kv_heads, length, self.head_dim), dtype=self.dtype)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                 cache: tuple[torch.Tensor, torch.Tensor], start: int) -> torch.Tensor:
        """ids, positions (B, T); key_mask (B, S ≥ start + T): 1 where a slot holds a real token.
        Writes the tokens' keys and values at slots [start, start + T); returns the logits (B, V),
        fp32, of the last column (with left padding, each row's last real token).

        The projections and the MLP run on the real tokens only — a left-padded prompt batch does
        no work for its padding — and attention on the (B, T) layout, where a padding slot holds a
        zero key and value that no real token attends to."""
        rows, new = ids.shape
        end = start + new
        heads, groups, size = self.heads, self.heads // self.kv_heads, self.head_dim
        real = key_mask[:, start:end].bool()
        index = None if bool(real.all()) else real.reshape(-1).nonzero().squeeze(1)  # (N,) of B·T

        def laid_out(tensor):  # (N, F) → (B, T, F), zero at padding
            if index is None:
                return tensor.view(rows, new, -1)
            spread = tensor.new_zeros(rows * new, tensor.shape[-1])
            spread[index] = tensor
            return spread.view(rows, new, -1)

        def packed(tensor):  # (B, T, F) → (N, F)
            tensor = tensor.reshape(rows * new, -1)
            return tensor if index is None else tensor[index]

        x = torch.nn.functional.embedding(packed(ids.unsqueeze(-1)).squeeze(-1), self.embed)  # (N, D)
        cos, sin = self.rotary(x, positions)  # (B, T, d)
        half = size // 2
        # rotate_half(q) · sin == roll(q, d/2) · [-sin₁, sin₂]: one roll instead of slice, neg, cat
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, d)
        # which slots each new token attends to: real ones up to itself, and always itself (a padding
        # query row then stays finite, so no NaN reaches the cache)
        slots = torch.arange(end, device=ids.device)
        query_slots = torch.arange(start, end, device=ids.device)
        allowed = (key_mask[:, None, :end].bool() & (slots <= query_slots[:, None])) | (slots == query_slots[:, None])
        bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf"))
        bias = bias[:, None, None]  # (B, 1, 1, T, S)
        keys_all, values_all = cache
        product = torch.ops.mkldnn._linear_pointwise  # PackedLinear's, called on (N, F) rows directly

        def project(linear, h):
            return product(h, linear.packed, linear.bias, "none", [], "")

        for layer, (in_norm, qkv_proj, o_proj, post_norm, gate_up_proj, down_proj) in enumerate(self.blocks):
            qkv = laid_out(project(qkv_proj, _rms_norm(x, in_norm, self.eps))).view(
                rows, new, heads + 2 * self.kv_heads, size)
            rotated = qkv[:, :, :heads + self.kv_heads]
            rotated = rotated * cos + rotated.roll(half, -1) * sin  # q and k together
            keys, values = keys_all[layer], values_all[layer]
            keys[:, :, :, start:end] = rotated[:, :, heads:].permute(0, 2, 3, 1)
            values[:, :, start:end] = qkv[:, :, heads + self.kv_heads:].transpose(1, 2)
            # grouped-query attention without repeating keys: (B, Hkv, G·T, d) @ (B, Hkv, d, S)
            query = rotated[:, :, :heads].transpose(1, 2).reshape(rows, self.kv_heads, groups * new, size)
            # transformers' eager attention: scores in the model's precision, softmax in fp32
            scores = (query @ keys[..., :end]) * self.scaling
            scores = scores.view(rows, self.kv_heads, groups, new, end).float() + bias
            weights = scores.softmax(-1).to(self.dtype).view(rows, self.kv_heads, groups * new, end)
            attended = (weights @ values[:, :, :end]).view(rows, heads, new, size).transpose(1, 2)
            x = x + project(o_proj, packed(attended))
            gate, up = project(gate_up_proj, _rms_norm(x, post_norm, self.eps)).chunk(2, -1)
            x = x + project(down_proj, torch.nn.functional.silu(gate) * up)
        return project(self.head, _rms_norm(laid_out(x)[:, -1], self.norm, self.eps)).float()
