"""Tiny random models of the families people fine-tune, each with a BPE tokenizer trained here on
the synthetic task's words: nothing downloaded. Each family keeps the traits that break pipelines —
GPT-2 with no PAD and no chat template (a new PAD row), Llama and Mistral base tokenizers with no
PAD (UNK becomes PAD), Gemma-2's final-logit softcapping, Qwen2's padded vocabulary, ChatML."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from rlhf.data.synthetic import TOPICS, WORDS

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}<start_of_turn>"
         "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] }}"
         "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

# family: (model_type, special tokens, chat template or None (a base model), extra vocabulary rows, config)
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
FAMILIES = {
    "llama": ("llama", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, None, 0, SMALL),
    "qwen2": ("qwen2", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                        "additional_special_tokens": ["<|im_start|>"]}, CHATML, 13, SMALL),
    "qwen3": ("qwen3", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                        "additional_special_tokens": ["<|im_start|>"]}, CHATML, 0, {**SMALL, "head_dim": 8}),
    "mistral": ("mistral", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, None, 0,
                {**SMALL, "sliding_window": 64}),
    "gemma2": ("gemma2", {"bos_token": "<bos>", "eos_token": "<end_of_turn>", "pad_token": "<pad>",
                          "unk_token": "<unk>", "additional_special_tokens": ["<start_of_turn>"]}, GEMMA, 0,
               {**SMALL, "head_dim": 8, "final_logit_softcapping": 1.0, "attn_logit_softcapping": 50.0,
                "query_pre_attn_scalar": 8, "sliding_window": 64}),
    "gpt2": ("gpt2", {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
             None, 0, dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)),
    "phi3": ("phi3", {"bos_token": "<s>", "eos_token": "<|end|>", "pad_token": "<|endoftext|>",
                      "unk_token": "<unk>", "additional_special_tokens": ["<|user|>", "<|assistant|>"]}, PHI3, 0,
             {**SMALL, "num_key_value_heads": 4}),
    "olmo2": ("olmo2", {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}, None, 0, SMALL),
}


def corpus() -> list[str]:
    lines = [f"Say words about {topic} {n}." for topic in TOPICS for n in range(0, 1000, 37)]
    lines += [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    return lines + ["### User:", "### Assistant:", "user assistant system model", "0123456789 .,?!"]


def train_tokenizer(special: dict, template: str | None) -> PreTrainedTokenizerFast:
    names = [token for key, token in special.items() if key != "additional_special_tokens"]
    names = list(dict.fromkeys(names + special.get("additional_special_tokens", [])))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=360, special_tokens=names, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    wrapped.chat_template = template
    return wrapped


def build_family(family: str, folder: Path, seed: int = 0) -> Path:
    """Save a tiny random ``family`` causal LM and its tokenizer into ``folder``."""
    model_type, special, template, extra_rows, sizes = FAMILIES[family]
    tokenizer = train_tokenizer(special, template)
    ids = {name: tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name])
           for name in ("bos_token", "eos_token", "pad_token") if name in tokenizer.special_tokens_map}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer) + extra_rows,
                                  bos_token_id=ids.get("bos_token"), eos_token_id=ids["eos_token"],
                                  pad_token_id=ids.get("pad_token"), **sizes)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharper than the init: greedy paths are decided, not near-ties
        model.get_output_embeddings().weight.mul_(4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
