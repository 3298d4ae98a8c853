"""LoRA through PEFT in SFT, the reward model and PPO: merged plain-transformers folders that equal
PEFT's own loading of the saved adapter, and a PPO reference that is the policy's frozen backbone."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf.config import load_config
from rlhf.data.synthetic import write_synthetic_data
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.models.lora import ADAPTER_FOLDER, WithoutAdapters, add_lora, peft_of


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_data(tmp_path_factory.mktemp("data"), n_demos=64, n_comparisons=64, n_prompts=32)


def test_lora_freezes_the_backbone_and_trains_only_adapters(tiny_path):
    settings = load_config("sft", [], ["lora.r=4"]).lora
    model = add_lora(load_causal_lm(tiny_path), settings)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    adapted = {name.split(".lora_")[0] for name in trainable}
    assert any(name.endswith("mlp.down_proj") for name in adapted)  # all-linear: the MLP too
    assert not any("lm_head" in name or "embed" in name for name in adapted)
    count = sum(p.numel() for name, p in model.named_parameters() if name in trainable)
    # r·(d_in + d_out) per adapted layer: 4 layers × (4 attention 256×256 + 3 MLP 256↔688)
    assert count == 4 * 4 * (4 * (256 + 256) + 3 * (256 + 688))


def test_sft_with_lora_saves_a_merged_folder_equal_to_peft_loading_the_adapter(tiny_path, data, tmp_path):
    from peft import PeftModel

    from rlhf.train.sft import train_sft

    config = load_config("sft", [], [f"model={tiny_path}", f"data=[{data['demonstrations']}]", "max_steps=4",
                                     "batch_size=8", "learning_rate=1e-2", "dropout=0", "lora.r=4",
                                     f"output_dir={tmp_path / 'sft'}", "max_length=128"])
    train_sft(config)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft").eval()  # plain transformers
    via_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path),
                                         tmp_path / "sft" / ADAPTER_FOLDER).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    ids = torch.randint(3, 250, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, via_peft(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
        assert not torch.allclose(merged(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not adapted


def test_reward_with_lora_trains_its_head_and_saves_a_plain_classifier(tiny_path, data, tmp_path):
    from rlhf.train.reward import train_reward

    config = load_config("reward", [], [f"model={tiny_path}", f"data=[{data['comparisons']}]", "max_steps=3",
                                        "batch_size=8", "learning_rate=1e-3", "lora={}", "max_length=128",
                                        f"output_dir={tmp_path / 'rm'}"])
    train_reward(config)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / ADAPTER_FOLDER / "adapter_model.safetensors").is_file()
    torch.manual_seed(0)  # the head our loader would draw for a fresh reward model from tiny
    from rlhf.models import load_scalar_model

    fresh = load_scalar_model(tiny_path, load_tokenizer(tiny_path)).hf.score.weight
    assert plain.score.weight.shape == (1, 256) and not torch.allclose(plain.score.weight, fresh)


def test_ppo_with_lora_keeps_one_copy_and_its_reference_is_the_sft_model(tiny_path, data, tmp_path):
    from rlhf.train.ppo import PPOTrainer
    from rlhf.train.reward import train_reward

    train_reward(load_config("reward", [], [f"model={tiny_path}", f"data=[{data['comparisons']}]", "max_steps=2",
                                            "batch_size=8", "max_length=128", f"output_dir={tmp_path / 'rm'}"]))
    config = load_config("ppo", [], [
        f"model={tiny_path}", f"reward_model={tmp_path / 'rm'}", f"prompts=[{data['prompts']}]", "ptx_coef=0",
        "rollout_batch_size=8", "max_new_tokens=8", "max_prompt_length=64", "max_length=128", "learning_rate=1e-2",
        "lora.r=4", "mixed_precision=fp32", f"output_dir={tmp_path / 'ppo'}"])
    trainer = PPOTrainer(config)
    assert isinstance(trainer.reference, WithoutAdapters) and trainer.reference.model is trainer.policy
    assert peft_of(trainer.value.hf) is not None  # value_lora: true by default
    first = trainer.step(trainer.next_prompts(8))
    assert first["objective/kl"] == 0.0
    second = trainer.step(trainer.next_prompts(8))
    assert second["objective/kl"] != 0.0  # the adapters moved the policy …
    device = trainer.accelerator.device  # the trainer's models sit there (a GPU where there is one)
    sft = load_causal_lm(tiny_path).eval().to(device)  # … and the reference is still the model PPO started from
    ids = torch.randint(3, 250, (2, 10)).to(device)
    with torch.no_grad():
        torch.testing.assert_close(trainer.reference(input_ids=ids).logits, sft(input_ids=ids).logits)
        assert not torch.allclose(trainer.policy(input_ids=ids).logits, sft(input_ids=ids).logits, atol=1e-4)
    trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    assert trainable < 0.2 * sum(p.numel() for p in trainer.policy.parameters())


def test_stages_in_one_process_may_differ_in_mixed_precision():
    from types import SimpleNamespace

    from rlhf.train.common import make_accelerator

    assert make_accelerator(SimpleNamespace(mixed_precision="fp32", seed=0)).mixed_precision == "no"
    assert make_accelerator(SimpleNamespace(mixed_precision="bf16", seed=0)).mixed_precision == "bf16"


def test_the_bf16_sampler_of_a_lora_policy_samples_its_merged_weights(tiny_path):
    """The decoder's bf16 copy of a LoRA policy is the merged model (packed on a CPU), refreshed by
    ``sync`` after the adapters change; the reference's copy is the backbone alone."""
    from rlhf.data.collate import pad
    from rlhf.decode import Decoder
    from rlhf.models.lora import merged_copy

    torch.manual_seed(0)
    model = add_lora(load_causal_lm(tiny_path), load_config("sft", [], ["lora.r=4"]).lora).eval()
    ids, mask = pad([[5, 6, 7, 8], [9, 10]], 0, side="left")

    def greedy(decoder):
        return decoder.sample(ids, mask, 12, [1], 0, temperature=0.0)[0]

    def perturb():
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.add_(torch.randn_like(param) * 0.5)

    perturb()
    decoder = Decoder(model, torch.bfloat16)
    assert torch.equal(greedy(decoder), greedy(Decoder(merged_copy(model), torch.bfloat16)))
    perturb()
    decoder.sync()
    assert torch.equal(greedy(decoder), greedy(Decoder(merged_copy(model), torch.bfloat16)))
    base = Decoder(load_causal_lm(tiny_path).eval(), torch.bfloat16)
    reference = Decoder(WithoutAdapters(model), torch.bfloat16)
    assert torch.equal(greedy(reference), greedy(base))
    assert not torch.equal(greedy(decoder), greedy(base))


def test_with_lora_the_value_model_is_the_reward_model_plus_adapters(tiny_path, data, tmp_path):
    """value_lora and no value_model: the reward model is the value model with its adapters disabled
    (one copy of those weights); its scores stay the trained reward model's while the value moves."""
    from rlhf.models import load_scalar_model, positions_from_mask, sequence_scores
    from rlhf.train.ppo import PPOTrainer
    from rlhf.train.reward import train_reward

    train_reward(load_config("reward", [], [f"model={tiny_path}", f"data=[{data['comparisons']}]", "max_steps=2",
                                            "batch_size=8", "max_length=128", f"output_dir={tmp_path / 'rm'}"]))
    trainer = PPOTrainer(load_config("ppo", [], [
        f"model={tiny_path}", f"reward_model={tmp_path / 'rm'}", f"prompts=[{data['prompts']}]", "ptx_coef=0",
        "rollout_batch_size=8", "max_new_tokens=8", "max_prompt_length=64", "max_length=128",
        "value_learning_rate=1e-2", "lora.r=4", "mixed_precision=fp32", f"output_dir={tmp_path / 'ppo'}"]))
    assert isinstance(trainer.reward_model, WithoutAdapters) and trainer.reward_model.model is trainer.value
    for _ in range(2):
        trainer.step(trainer.next_prompts(8))
    device = trainer.accelerator.device
    plain = load_scalar_model(str(tmp_path / "rm"), load_tokenizer(tiny_path), trained=True).eval().to(device)
    ids = torch.randint(3, 250, (2, 10)).to(device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = sequence_scores(plain(ids, mask, positions_from_mask(mask)), mask)
        torch.testing.assert_close(sequence_scores(trainer.reward_model(ids, mask), mask), expected)
        assert not torch.allclose(sequence_scores(trainer.value(ids, mask), mask), expected)


def test_bf16_bases_give_the_same_numbers_under_bf16_autocast_and_save_fp32(tiny_path, tmp_path):
    from rlhf.models.lora import merged_copy

    torch.manual_seed(0)
    ids = torch.randint(3, 250, (2, 12))
    outputs = []
    for base_dtype in ("fp32", "bf16"):
        torch.manual_seed(1)  # the same lora_A draw for both
        settings = load_config("sft", [], ["lora.r=4", f"lora.base_dtype={base_dtype}"]).lora
        model = add_lora(load_causal_lm(tiny_path), settings).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.linspace(-0.05, 0.05, param.numel()).view_as(param))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs.append(model(input_ids=ids).logits)
        assert {p.dtype for p in merged_copy(model).parameters()} == {torch.float32}
    assert torch.equal(outputs[0], outputs[1])


def test_bf16_bases_without_bf16_mixed_precision_is_a_config_error(tiny_path, data, tmp_path):
    from rlhf.config import ConfigError
    from rlhf.train.sft import train_sft

    config = load_config("sft", [], [f"model={tiny_path}", f"data=[{data['demonstrations']}]", "max_steps=1",
                                     "lora.base_dtype=bf16", "mixed_precision=fp32", f"output_dir={tmp_path / 's'}"])
    with pytest.raises(ConfigError, match="^lora.base_dtype: bf16 needs bf16 mixed precision"):
        train_sft(config)
