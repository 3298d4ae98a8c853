"""LoRA through PEFT: adapters on a model that every stage keeps using as a plain HF model.

``add_lora`` injects the adapters *into* the HF model (PEFT replaces its linear layers in place),
so ``ResponseLM``, ``ScalarModel``, the decoder and DDP run it unchanged; the ``PeftModel`` that
owns the adapters rides along on the HF model (:func:`peft_of`) for the three things only it does:
disabling the adapters (PPO's reference is the policy's backbone), merging them (every stage writes
a merged, plain ``transformers`` folder) and saving them (``adapter/`` beside it).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import PreTrainedModel

ADAPTER_FOLDER = "adapter"
_PEFT = "_rlhf_peft"  # the PeftModel, kept outside the module tree (it contains the model itself)


def add_lora(model: PreTrainedModel, settings, scalar_head: bool = False) -> PreTrainedModel:
    """Freeze ``model`` and give it trainable LoRA adapters (``settings``: a :class:`rlhf.config.LoraSettings`).
    A reward or value model (``scalar_head``) trains its one-output head in full as well."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules,
                        task_type=TaskType.SEQ_CLS if scalar_head else TaskType.CAUSAL_LM)
    peft_model = get_peft_model(model, config)
    object.__setattr__(model, _PEFT, peft_model)
    if settings.base_dtype == "bf16":  # the frozen weights the adapters sit on, stored in half the memory
        from peft.tuners.lora import LoraLayer

        for layer in model.modules():
            if isinstance(layer, LoraLayer):
                layer.base_layer.to(torch.bfloat16)
    return model


def peft_of(model: torch.nn.Module):
    """The ``PeftModel`` behind a model given adapters by :func:`add_lora` (or behind a
    :class:`~rlhf.models.ScalarModel`'s HF model), else ``None``."""
    found = model.__dict__.get(_PEFT)
    inner = model.__dict__.get("_modules", {}).get("hf")
    return found if found is not None or inner is None else peft_of(inner)


def adapters_disabled(model: torch.nn.Module):
    """A context in which ``model`` computes as its frozen backbone (no-op without adapters)."""
    peft_model = peft_of(model)
    return peft_model.disable_adapter() if peft_model is not None else nullcontext()


class WithoutAdapters(torch.nn.Module):
    """The backbone of a LoRA model, seen as a model of its own: PPO's reference without a second
    copy of the weights. ``forward`` is the model's, with its adapters disabled for the call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        self.generation_config = getattr(model, "generation_config", None)

    def forward(self, *args, **kwargs):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)


def merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain HF model with the adapters merged into its weights (``model`` itself is unchanged)."""
    if peft_of(model) is None:
        return model
    duplicate = copy.deepcopy(model)
    merged = peft_of(duplicate).merge_and_unload()
    merged.__dict__.pop(_PEFT, None)
    return merged.to(torch.float32)  # bf16 bases (lora.base_dtype) come back as the fp32 checkpoints all stages write


def save_adapter(model: PreTrainedModel, folder: Path) -> None:
    """The adapters alone (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``) in
    ``folder/adapter``, loadable with ``PeftModel.from_pretrained(base, folder/adapter)``."""
    peft_model = peft_of(model)
    if peft_model is not None:
        peft_model.save_pretrained(Path(folder) / ADAPTER_FOLDER, safe_serialization=True)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [param for param in model.parameters() if param.requires_grad]
