"""Loading causal LMs and scalar-head (reward / value) models as plain Hugging Face classes."""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)
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


# Used when a tokenizer has no chat template (a base model) and the config gives none. Plain text
# roles, one EOS after each assistant turn (the token a response ends with), so that history and a
# sampled response end the same way. ``chat_template:`` in a stage's config replaces it.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
NEW_PAD_TOKEN = "<|pad|>"


def read_chat_template(value: str) -> str:
    """``chat_template:`` of a config: a Jinja string, or the path of a file holding one."""
    if "{" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise DataError(f"chat_template: {value}: no such file (give a Jinja template string or a file with one)")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"chat_template: {value}: cannot be read ({one_line(error)})") from None


def load_tokenizer(name_or_path: str, chat_template: str | None = None):
    """The model's tokenizer, ready for every stage: a chat template (``chat_template``, else its own,
    else :data:`PLAIN_CHAT_TEMPLATE`), an EOS, and a PAD token distinct from EOS (see
    :func:`ensure_pad_token`). Saved with each stage's output, so the next stage reads the same."""
    with loading(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(model_source(name_or_path))
    if tokenizer.eos_token_id is None:
        raise DataError(f"{name_or_path}: the tokenizer has no EOS token; responses could never end "
                        "(set eos_token in its tokenizer_config.json)")
    tokenizer.rlhf_vocab_size = len(tokenizer)  # before any token of ours: what the model must already fit
    if chat_template:
        tokenizer.chat_template = read_chat_template(chat_template)
    elif not tokenizer.chat_template:
        logger.info("%s: the tokenizer has no chat template; using the plain one (### User: / ### Assistant:)",
                    name_or_path)
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    """PAD must exist and differ from EOS: masking pads that are EOS teaches the model never to stop.

    A tokenizer without one (GPT-2, Llama-3 and Mistral base models) gets an existing special token
    that is not EOS or BOS — one named like a pad, else UNK, else a reserved one — and only when
    none exists a new ``<|pad|>`` (the model's embeddings then grow by a row: :func:`fit_embeddings`)."""
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in taken:
        return
    specials = [token.content for _, token in sorted(tokenizer.added_tokens_decoder.items()) if token.special]
    candidates = ([t for t in specials if "pad" in t.lower()] + [tokenizer.unk_token]
                  + [t for t in specials if "reserved" in t.lower()])
    for token in candidates:
        if token is not None and tokenizer.convert_tokens_to_ids(token) not in taken:
            tokenizer.pad_token = token
            return
    tokenizer.add_special_tokens({"pad_token": NEW_PAD_TOKEN})


def same_tokenizer(a, b, texts_too: bool = True) -> bool:
    """Whether two tokenizers give the same ids (vocabulary and special tokens) — and, with
    ``texts_too``, render a conversation the same way (chat template)."""
    same_ids = (a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id
                and a.pad_token_id == b.pad_token_id)
    return same_ids and (not texts_too or a.chat_template == b.chat_template)


def fit_embeddings(model: PreTrainedModel, tokenizer, name_or_path: str) -> None:
    """Check that the tokenizer belongs to the model, grow the embeddings by the PAD row
    :func:`ensure_pad_token` may have added, and record PAD in the model's configs."""
    rows = model.get_input_embeddings().num_embeddings
    own = getattr(tokenizer, "rlhf_vocab_size", len(tokenizer))
    if own > rows:
        raise DataError(f"{name_or_path}: the tokenizer has {own} tokens but the model's embeddings only "
                        f"{rows} rows; the tokenizer belongs to another model")
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():  # the new PAD row: the mean embedding (never attended to, but finite)
            for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
                if embedding is not None and embedding.weight.shape[0] == len(tokenizer):
                    embedding.weight[rows:] = embedding.weight[:rows].mean(0)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def architecture(name_or_path: str):
    """(config, its first architecture class name or '') of a model folder, hub id or preset."""
    with loading(name_or_path):
        config = AutoConfig.from_pretrained(model_source(name_or_path))
    return config, (getattr(config, "architectures", None) or [""])[0]


def is_scalar_head(architecture_name: str) -> bool:
    return architecture_name.endswith("ForSequenceClassification")


ATTENTION_DROPOUT_FIELDS = ("attention_dropout", "attn_pdrop")


def dropout_fields(config, attention: float) -> dict[str, float]:
    """Config overrides that leave one dropout: ``attention`` on attention probabilities, none
    elsewhere (GPT-2's ``resid_pdrop``/``embd_pdrop`` default to 0.1; residual dropout, where a stage
    wants it, is :func:`rlhf.train.common.add_residual_dropout`, the same for every family)."""
    return {key: attention if key in ATTENTION_DROPOUT_FIELDS else 0.0 for key, value in config.to_dict().items()
            if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop"))}


CPU_EAGER_MAX_LENGTH = 192  # BENCHMARKS.md, "The attention kernel of training": 1.06-1.07x to 192 tokens, 1.00x at 256


def training_attention(attn_implementation: str | None, max_length: int, device: torch.device) -> str | None:
    """The attention kernel of the models a stage trains: the one asked for; unset (None), ``eager``
    on a CPU when the stage's ``max_length`` is at most ``CPU_EAGER_MAX_LENGTH`` tokens (PyTorch's
    CPU flash-attention backward costs more there than eager's two batched products; a reward
    model's row holds a prompt and its K responses, longer, and measured 1.08x faster all the
    same), else transformers' default (None)."""
    if attn_implementation is None and device.type == "cpu" and max_length <= CPU_EAGER_MAX_LENGTH:
        return "eager"
    return attn_implementation


def attention_kwargs(attn_implementation: str | None) -> dict:
    """``from_pretrained``'s attention argument: none (transformers' default) or the one asked for; an
    unknown or unavailable kernel is transformers' ValueError, one line through :func:`loading`."""
    return {} if attn_implementation is None else {"attn_implementation": attn_implementation}


def load_causal_lm(name_or_path: str, dropout: float = 0.0, tokenizer=None,
                   attn_implementation: str | None = None) -> PreTrainedModel:
    """Any HF causal LM folder, hub id or preset name, in fp32 (autocast handles bf16). With the
    ``tokenizer`` of :func:`load_tokenizer`, its embeddings are fitted to it (:func:`fit_embeddings`);
    with ``attn_implementation`` (sdpa, eager, …), that attention kernel instead of transformers' default."""
    config, name = architecture(name_or_path)
    if is_scalar_head(name) or getattr(config, "is_encoder_decoder", False):
        raise DataError(f"{name_or_path}: a {name or config.model_type} is not a causal LM; a policy (and an SFT "
                        "start) must load with AutoModelForCausalLM (decoder-only)")
    with loading(name_or_path):
        model = AutoModelForCausalLM.from_pretrained(model_source(name_or_path), dtype=torch.float32,
                                                     **attention_kwargs(attn_implementation),
                                                     **dropout_fields(config, dropout))
    if tokenizer is not None:
        fit_embeddings(model, tokenizer, name_or_path)
    return model


def load_scalar_model(name_or_path: str, tokenizer=None, trained: bool = False,
                      attn_implementation: str | None = None) -> ScalarModel:
    """A backbone with a one-output linear head (``AutoModelForSequenceClassification``, 1 label).

    A sequence-classification folder with one label keeps its head as trained — ours (with its
    normalisation bias) or one saved by plain ``transformers`` or TRL (bias 0). From a causal-LM
    folder the head is new and initialised N(0, 1/(d_model + 1)) as in the 2019 RLHF code, unless
    ``trained`` asks for a reward model (PPO's reward, an evaluation judge): then it is an error.
    With ``tokenizer`` (:func:`load_tokenizer`), the embeddings are fitted to it; ``attn_implementation``
    as :func:`load_causal_lm`.
    """
    config, name = architecture(name_or_path)
    if getattr(config, "is_encoder_decoder", False):
        raise DataError(f"{name_or_path}: a {name or config.model_type} is an encoder-decoder model; reward and "
                        "value models are decoder-only (AutoModelForSequenceClassification with one label)")
    if is_scalar_head(name) and config.num_labels != 1:
        raise DataError(f"{name_or_path}: a reward model has one output; this {name} has num_labels "
                        f"{config.num_labels}")
    if trained and not is_scalar_head(name):
        raise DataError(f"{name_or_path}: not a reward model (a {name or config.model_type}); give a folder "
                        "written by `rlhf reward`, or any AutoModelForSequenceClassification with one label")
    with loading(name_or_path):
        model = AutoModelForSequenceClassification.from_pretrained(model_source(name_or_path), num_labels=1,
                                                                   dtype=torch.float32,
                                                                   **attention_kwargs(attn_implementation),
                                                                   **dropout_fields(config, 0.0))
    if tokenizer is not None:
        fit_embeddings(model, tokenizer, name_or_path)
    if is_scalar_head(name) and getattr(model.config, REWARD_BIAS_KEY, None) is None:
        setattr(model.config, REWARD_BIAS_KEY, 0.0)  # trained elsewhere: its head as it is, no normalisation
    if getattr(model.config, REWARD_BIAS_KEY, None) is None:
        head = scalar_head(model)
        torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(model.config.hidden_size + 1))
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)
        setattr(model.config, REWARD_BIAS_KEY, 0.0)
    return ScalarModel(model)


def scalar_head(model: PreTrainedModel) -> torch.nn.Module:
    """The one-output linear head (or, under LoRA, PEFT's trainable copy of it)."""
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear) or isinstance(getattr(head, "original_module", None), torch.nn.Linear):
            return head
    raise TypeError(f"{type(model).__name__} has no linear scalar head (score/classifier)")


def zero_head_weights(model: ScalarModel) -> None:
    """Zero the trainable weights of ``model``'s scalar head (under LoRA, PEFT's copy; the frozen
    original stays the reward model's): the model then reads one constant, the head's bias plus the
    normalisation bias, at every position, as lm-human-preferences' value head (init scale 0) did."""
    with torch.no_grad():
        for name, parameter in scalar_head(model.hf).named_parameters():
            if parameter.requires_grad and name.endswith("weight"):
                parameter.zero_()


class ScalarModel(torch.nn.Module):
    """An ``AutoModelForSequenceClassification`` (one label) seen as a per-token value function.

    ``forward`` returns the head plus the normalisation bias at every position, (B, T) → (B, T)
    float: the value model uses all of them (so it starts from the *normalised* reward), the reward
    model reads the last real one (:func:`sequence_scores`). Wrapping it
    here lets DDP see the forward that is really run. ``hf`` is what ``save_pretrained`` writes.
    """

    def __init__(self, hf_model: PreTrainedModel):
        super().__init__()
        self.hf = hf_model

    @property
    def _no_split_modules(self):  # FSDP shards by the wrapped model's blocks
        return self.hf._no_split_modules

    @property
    def reward_bias(self) -> float:
        return float(getattr(self.hf.config, REWARD_BIAS_KEY, 0.0) or 0.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hf.base_model(  # a score never decodes: no KV cache to fill
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return scalar_head(self.hf)(hidden).squeeze(-1).float() + self.reward_bias


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own logits from its last hidden states: the output layer, then the final scaling
    some families apply in their ``forward`` (Gemma-2/3 softcapping, Cohere's ``logit_scale``,
    Granite's ``logits_scaling``). (..., d) → (..., V)."""
    logits = model.get_output_embeddings()(hidden)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "logit_scale", None):  # Cohere
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        logits = logits / config.logits_scaling
    if getattr(config, "final_logit_softcapping", None):  # Gemma-2/3
        logits = torch.tanh(logits / config.final_logit_softcapping) * config.final_logit_softcapping
    return logits


class ResponseLM(torch.nn.Module):
    """A causal LM whose forward is the SFT loss, with the output layer applied only where a
    response token is predicted: (M, V) logits for the M targets instead of (B, T, V).

    loss = −Σ_t m_t · log p(x_t | x_<t) / Σ_t m_t (as :func:`rlhf.losses.response_lm_loss`), with the
    model's own logits (:func:`output_logits`). Wrapping the model lets DDP see the forward that is
    really run; ``hf`` is saved.
    """

    def __init__(self, hf_model: PreTrainedModel):
        super().__init__()
        self.hf = hf_model

    @property
    def _no_split_modules(self):  # FSDP shards by the wrapped model's blocks
        return self.hf._no_split_modules

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets = loss_mask[:, 1:].bool()  # position t − 1 predicts token t
        logits = output_logits(self.hf, hidden[:, :-1][targets])  # (M, V)
        return torch.nn.functional.cross_entropy(logits.float(), input_ids[:, 1:][targets])


class SequenceLogProbs(ResponseLM):
    """A causal LM whose forward is Σ_t log p(y_t | x, y_<t) over each response's tokens: the output
    layer applied only where a response token is predicted, as :class:`ResponseLM`. DPO's policy and
    reference. Two layouts:

    - one response per row (:func:`~rlhf.data.collate.collate_ranked`): the tokens where ``loss_mask``
      (N, T) is 1; (N, T) → (N,) float;
    - a prompt and its K responses in one row (:func:`~rlhf.data.collate.collate_shared_prompt`, with
      its 4-D ``attention_mask`` and ``position_ids``): the token at flat position i is predicted by
      the output at ``label_source`` [i] and summed into slot ``label_slot`` [i] (both −1 off the
      responses); (B, T) → (B·T,) float, non-zero at each response's slot.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, label_source: torch.Tensor | None = None,
                label_slot: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids).last_hidden_state
        if label_source is None:
            targets = loss_mask[:, 1:].bool()  # position t − 1 predicts token t
            predictors, labels = hidden[:, :-1][targets], input_ids[:, 1:][targets]  # row-major order
            slots, size = targets.nonzero()[:, 0], input_ids.shape[0]
        else:
            targets = label_source >= 0
            predictors, labels = hidden.flatten(0, 1)[label_source[targets]], input_ids[targets]
            slots, size = label_slot[targets], input_ids.numel()
        logits = output_logits(self.hf, predictors).float()  # (M, V)
        token = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return torch.zeros(size, device=token.device).index_add(0, slots, token)


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


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks of an HF model (``model.layers``, GPT-2's ``transformer.h``, …):
    the ModuleList as long as the config's number of hidden layers."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    from rlhf.config import ConfigError

    raise ConfigError(f"train_layers: {type(model).__name__} has no list of {count} transformer blocks to freeze")


def train_top_layers(model: torch.nn.Module, layers: int) -> int:
    """Freeze the embeddings and every transformer block below the top ``layers``: the backward pass
    then stops at the lowest trained block (a third of the cost of each frozen block is its forward).
    The final norm and a head of its own (a reward model's) stay trained; an output layer tied to the
    input embedding is that embedding, frozen with it. Returns the number of frozen blocks."""
    blocks = decoder_blocks(model)
    if not 1 <= layers <= len(blocks):
        from rlhf.config import ConfigError

        raise ConfigError(f"train_layers: must be between 1 and the model's {len(blocks)} blocks, got {layers}")
    frozen = len(blocks) - layers
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.requires_grad_(False)
    for block in list(blocks)[:frozen]:
        block.requires_grad_(False)
    return frozen
