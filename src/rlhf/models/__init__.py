"""Loading causal LMs and scalar-head (reward / value) models as plain Hugging Face classes."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from rlhf.data.records import DataError, one_line
from rlhf.models.presets import PRESETS, resolve_model_path

REWARD_BIAS_KEY = "rlhf_reward_bias"
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # gpt2, HuggingFaceTB/SmolLM2-135M


def model_source(name_or_path: str) -> str:
    """A preset's folder, a local model folder, or a hub id; a path that cannot be a model is a
    one-line :class:`DataError` before anything is loaded."""
    path = resolve_model_path(name_or_path)
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise DataError(f"{name_or_path}: is a file, not a model folder (a Hugging Face folder with config.json)")
        if not (local / "config.json").is_file():
            raise DataError(f"{name_or_path}: not a model folder (no config.json in it)")
        return str(local)
    if not HUB_ID.fullmatch(path) or path.startswith((".", "~")):
        raise DataError(f"{name_or_path}: no such model folder (nor a preset: {', '.join(PRESETS)})")
    return path


@contextmanager
def loading(name_or_path: str):
    """A model or tokenizer that transformers cannot load (corrupt weights, a broken config, no network
    for a hub id) is one line naming it, not a traceback."""
    try:
        yield
    except DataError:
        raise
    except (OSError, ValueError, SafetensorError) as error:
        problem = one_line(error)
        problem = problem if problem.startswith(str(name_or_path)) else f"{name_or_path}: cannot be loaded ({problem})"
        raise DataError(problem) from None


def load_tokenizer(name_or_path: str):
    with loading(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(model_source(name_or_path))
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise DataError(
            f"{name_or_path}: the tokenizer needs a PAD token distinct from EOS "
            f"(pad={tokenizer.pad_token!r}, eos={tokenizer.eos_token!r}); masking pads that are EOS "
            "teaches the model never to stop"
        )
    tokenizer.padding_side = "right"
    return tokenizer


def architecture(name_or_path: str):
    """(config, its first architecture class name or '') of a model folder, hub id or preset."""
    with loading(name_or_path):
        config = AutoConfig.from_pretrained(model_source(name_or_path))
    return config, (getattr(config, "architectures", None) or [""])[0]


def is_scalar_head(architecture_name: str) -> bool:
    return architecture_name.endswith("ForSequenceClassification")


def load_causal_lm(name_or_path: str, dropout: float = 0.0) -> PreTrainedModel:
    """Any HF causal LM folder, hub id or preset name, in fp32 (autocast handles bf16)."""
    config, name = architecture(name_or_path)
    if is_scalar_head(name) or getattr(config, "is_encoder_decoder", False):
        raise DataError(f"{name_or_path}: a {name or config.model_type} is not a causal LM; a policy (and an SFT "
                        "start) must load with AutoModelForCausalLM (decoder-only)")
    kwargs = {"attention_dropout": dropout} if dropout else {}
    with loading(name_or_path):
        return AutoModelForCausalLM.from_pretrained(model_source(name_or_path), dtype=torch.float32, **kwargs)


def load_scalar_model(name_or_path: str, pad_token_id: int | None = None, trained: bool = False) -> ScalarModel:
    """A backbone with a one-output linear head (``AutoModelForSequenceClassification``, 1 label).

    A sequence-classification folder with one label keeps its head as trained — ours (with its
    normalisation bias) or one saved by plain ``transformers`` or TRL (bias 0). From a causal-LM
    folder the head is new and initialised N(0, 1/(d_model + 1)) as in the 2019 RLHF code, unless
    ``trained`` asks for a reward model (PPO's reward, an evaluation judge): then it is an error.
    """
    config, name = architecture(name_or_path)
    if is_scalar_head(name) and config.num_labels != 1:
        raise DataError(f"{name_or_path}: a reward model has one output; this {name} has num_labels "
                        f"{config.num_labels}")
    if trained and not is_scalar_head(name):
        raise DataError(f"{name_or_path}: not a reward model (a {name or config.model_type}); give a folder "
                        "written by `rlhf reward`, or any AutoModelForSequenceClassification with one label")
    with loading(name_or_path):
        model = AutoModelForSequenceClassification.from_pretrained(model_source(name_or_path), num_labels=1,
                                                                   dtype=torch.float32)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if is_scalar_head(name) and getattr(model.config, REWARD_BIAS_KEY, None) is None:
        setattr(model.config, REWARD_BIAS_KEY, 0.0)  # trained elsewhere: its head as it is, no normalisation
    if getattr(model.config, REWARD_BIAS_KEY, None) is None:
        head = scalar_head(model)
        torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(model.config.hidden_size + 1))
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)
        setattr(model.config, REWARD_BIAS_KEY, 0.0)
    return ScalarModel(model)


def scalar_head(model: PreTrainedModel) -> torch.nn.Linear:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise TypeError(f"{type(model).__name__} has no linear scalar head (score/classifier)")


class ScalarModel(torch.nn.Module):
    """An ``AutoModelForSequenceClassification`` (one label) seen as a per-token value function.

    ``forward`` returns the head at every position, (B, T) → (B, T) float: the value model uses
    all of them, the reward model reads the last real one (:func:`sequence_scores`). Wrapping it
    here lets DDP see the forward that is really run. ``hf`` is what ``save_pretrained`` writes.
    """

    def __init__(self, hf_model: PreTrainedModel):
        super().__init__()
        self.hf = hf_model

    @property
    def reward_bias(self) -> float:
        return float(getattr(self.hf.config, REWARD_BIAS_KEY, 0.0) or 0.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hf.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return scalar_head(self.hf)(hidden).squeeze(-1).float()


class ResponseLM(torch.nn.Module):
    """A causal LM whose forward is the SFT loss, with the output layer applied only where a
    response token is predicted: (M, V) logits for the M targets instead of (B, T, V).

    loss = −Σ_t m_t · log p(x_t | x_<t) / Σ_t m_t (as :func:`rlhf.losses.response_lm_loss`), for
    models whose logits are ``output_embeddings(last_hidden_state)`` (Llama, Qwen, Mistral, GPT-2,
    SmolLM…). Wrapping the model lets DDP see the forward that is really run; ``hf`` is saved.
    """

    def __init__(self, hf_model: PreTrainedModel):
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets = loss_mask[:, 1:].bool()  # position t − 1 predicts token t
        logits = self.hf.get_output_embeddings()(hidden[:, :-1][targets])  # (M, V)
        return torch.nn.functional.cross_entropy(logits.float(), input_ids[:, 1:][targets])


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real (mask = 1) column of each row, whatever the padding side. (B, T) → (B,)."""
    columns = attention_mask.shape[1]
    return columns - 1 - attention_mask.long().flip(-1).argmax(-1)


def sequence_scores(values: torch.Tensor, attention_mask: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """Reward r(x, y): the per-token head output read at the last real token (the EOS), plus the
    normalisation bias. values, attention_mask (B, T) → (B,)."""
    return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1) + bias


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at the first real token (needed with left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
