"""The decoder PPO and `generate` sample with: exact against transformers' `generate` and the eager
loop on several model families, pre-packed bf16 weights bit-identical to a plain bf16 linear,
buckets that keep one compiled step, and every EOS id ending a response."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from rlhf.data.collate import pad
from rlhf.decode import Decoder, PackedLinear, can_pack, sample_responses

PAD, EOS, VOCAB = 0, 1, 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2, tie_word_embeddings=False)
FAMILIES = {
    "llama": lambda: LlamaConfig(**SMALL),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                               pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2),
}


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()
    with torch.no_grad():  # sharper than the init: greedy paths are decided, not near-ties
        model.get_output_embeddings().weight.mul_(8)
    return model


def prompts():
    return pad([[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33]], PAD, side="left")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_equals_hf_generate(family):
    model = build(family)
    ids, mask = prompts()
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                            eos_token_id=EOS, pad_token_id=PAD)[:, ids.shape[1]:]
    decoder = Decoder(model, batch_bucket=4, prompt_bucket=16)  # a filler row and 9 columns of padding
    ours, ours_mask = decoder.sample(ids, mask, 10, EOS, PAD, temperature=0.0)
    assert ours.tolist() == theirs.tolist()
    assert ours_mask.shape == ours.shape


@pytest.mark.skipif(not can_pack(torch.float32), reason="this torch build has no oneDNN fp32 packing")
@pytest.mark.parametrize("variant", ["llama", "qwen2", "llama-tied-biased", "mistral", "llama-one-kv-head-wide"])
def test_packed_llama_gives_the_hf_forward_logits_at_every_step(variant):
    """PackedLlama's own forward (fused q/k/v and gate/up, its own cache, grouped attention) against
    the full HF forward of the same left-padded sequences, position by position, in fp32: Qwen2's q/k/v
    biases, a tied output embedding and Llama's optional attention and MLP biases, Mistral without a
    window, one key/value head for four query heads with a head size other than hidden / heads."""
    from transformers import MistralConfig

    from rlhf.models import positions_from_mask

    if variant == "mistral":
        torch.manual_seed(4)
        model = AutoModelForCausalLM.from_config(MistralConfig(**SMALL, sliding_window=None)).eval()
    elif variant == "llama-one-kv-head-wide":
        torch.manual_seed(4)
        config = LlamaConfig(**{**SMALL, "num_key_value_heads": 1, "head_dim": 16})
        model = AutoModelForCausalLM.from_config(config).eval()
    elif variant == "llama-tied-biased":
        torch.manual_seed(4)
        config = LlamaConfig(**{**SMALL, "tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True})
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():  # the biases start at zero: give them values
            for name, parameter in model.named_parameters():
                if name.endswith(".bias"):
                    parameter.normal_(0, 0.5)
    else:
        model = build(variant, seed=4)
    decoder = Decoder(model)
    packed = decoder.packed_llama
    assert packed is not None and packed.tied == (variant == "llama-tied-biased")
    ids, mask = prompts()
    follow = torch.tensor([[40, 41, 42], [50, 51, 52], [60, 61, 62]])
    whole_ids = torch.cat([ids, follow], 1)
    whole_mask = torch.cat([mask, torch.ones_like(follow)], 1)
    with torch.no_grad():
        expected = model(input_ids=whole_ids, attention_mask=whole_mask,
                         position_ids=positions_from_mask(whole_mask)).logits
    prompt_length = ids.shape[1]
    cache = packed.cache(3, whole_ids.shape[1] + 2)  # longer than used: slots past the end are never read
    logits = packed(ids, positions_from_mask(mask), whole_mask, cache, 0)
    torch.testing.assert_close(logits, expected[:, prompt_length - 1], rtol=1e-4, atol=1e-4)
    for step in range(follow.shape[1]):
        slot = prompt_length + step
        logits = packed(follow[:, step:step + 1], positions_from_mask(whole_mask)[:, slot:slot + 1],
                        whole_mask[:, :slot + 1], cache, slot)
        torch.testing.assert_close(logits, expected[:, slot], rtol=1e-4, atol=1e-4)


def test_a_model_trained_with_eager_attention_is_sampled_with_sdpa_and_the_same_tokens():
    """Training may ask for eager attention (faster backward on a CPU); the sampling copy switches to
    sdpa, faster for one-token queries, and samples what the eager model itself samples; the model
    being trained keeps its kernel."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL), attn_implementation="eager").eval()
    ids, mask = prompts()
    decoder = Decoder(model, dtype=torch.bfloat16, pack=False)
    assert decoder.model.config._attn_implementation == "sdpa" and model.config._attn_implementation == "eager"
    bf16 = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL), attn_implementation="eager").eval()
    bf16.load_state_dict(model.state_dict())
    bf16.to(torch.bfloat16)
    theirs = sample_responses(bf16, ids, mask, 12, EOS, PAD, 1.0, torch.Generator().manual_seed(5))
    ours = decoder.sample(ids, mask, 12, EOS, PAD, 1.0, torch.Generator().manual_seed(5))
    assert ours[0].tolist() == theirs[0].tolist()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampled_tokens_equal_the_eager_loop(family):
    model = build(family, seed=1)
    ids, mask = prompts()
    eager = sample_responses(model, ids, mask, 24, EOS, PAD, 1.0, torch.Generator().manual_seed(7))
    static = Decoder(model, batch_bucket=8).sample(ids, mask, 24, EOS, PAD, 1.0, torch.Generator().manual_seed(7))
    assert static[0].tolist() == eager[0].tolist() and static[1].tolist() == eager[1].tolist()


@pytest.mark.skipif(not can_pack(), reason="this torch build has no oneDNN bf16 packing")
def test_packed_linear_is_bit_identical_to_bf16_linear():
    torch.manual_seed(0)
    for layer in (torch.nn.Linear(48, 40), torch.nn.Linear(48, 40, bias=False)):
        for rows in (1, 5, 16):
            x = torch.randn(rows, 3, 48)
            expected = torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16(),
                                                  None if layer.bias is None else layer.bias.bfloat16())
            assert torch.equal(PackedLinear(layer, batch_hint=16)(x), expected)


@pytest.mark.skipif(not can_pack(torch.float32), reason="this torch build has no oneDNN fp32 packing")
def test_packed_fp32_linear_equals_fp32_linear_to_rounding():
    """On a CPU without fast bf16 the decoder samples in fp32 from oneDNN-packed weights: the same
    product as MKL's ``linear``, summed in another order (so equal to fp32 rounding, not bit for bit)."""
    torch.manual_seed(0)
    for layer in (torch.nn.Linear(48, 40), torch.nn.Linear(48, 40, bias=False)):
        for rows in (1, 5, 16):
            x = torch.randn(rows, 3, 48)
            ours = PackedLinear(layer, batch_hint=16, dtype=torch.float32)(x)
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours, torch.nn.functional.linear(x, layer.weight, layer.bias),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not can_pack(torch.float32), reason="this torch build has no oneDNN fp32 packing")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_an_fp32_model_is_sampled_from_a_packed_copy_that_follows_weight_updates(family):
    """Without bf16, the decoder packs an fp32 copy (the model being trained is left as it is): its
    greedy tokens are the unpacked model's, its log-probs the unpacked sampler's to fp32 rounding,
    and :meth:`Decoder.sync` takes an update."""
    model = build(family, seed=2)
    ids, mask = prompts()
    decoder = Decoder(model)
    assert decoder.pack and decoder.copied
    # a Llama runs PackedLlama's forward (no HF copy); GPT-2 a copy with packed linear layers
    assert (decoder.packed_llama is not None) == (family == "llama")
    assert decoder.packed_llama is not None or decoder.model is not model
    assert all(type(m) is not PackedLinear for m in model.modules())
    plain = Decoder(model, pack=False)
    assert not plain.copied and plain.model is model

    def both(temperature):
        return [d.sample(ids, mask, 20, EOS, PAD, temperature, torch.Generator().manual_seed(3), return_logprobs=True)
                for d in (decoder, plain)]

    (ours, theirs), (greedy_ours, greedy_theirs) = both(1.0), both(0.0)
    assert ours[0].tolist() == theirs[0].tolist() and greedy_ours[0].tolist() == greedy_theirs[0].tolist()
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # an optimizer step on the model
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    stale = decoder.sample(ids, mask, 20, EOS, PAD, 1.0, torch.Generator().manual_seed(3))
    decoder.sync()
    ours, theirs = both(1.0)
    assert ours[0].tolist() == theirs[0].tolist() and stale[0].tolist() != ours[0].tolist()


@pytest.mark.skipif(not can_pack(), reason="this torch build has no oneDNN bf16 packing")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_copy_packed_equals_unpacked_and_follows_weight_updates(family):
    model = build(family, seed=2)
    ids, mask = prompts()
    decoder = Decoder(model, dtype=torch.bfloat16)
    assert decoder.pack and decoder.copied and next(model.parameters()).dtype == torch.float32
    plain = Decoder(model, dtype=torch.bfloat16, pack=False)  # the same bf16 copy without packing

    def both():
        ours = decoder.sample(ids, mask, 20, EOS, PAD, 1.0, torch.Generator().manual_seed(3), return_logprobs=True)
        theirs = plain.sample(ids, mask, 20, EOS, PAD, 1.0, torch.Generator().manual_seed(3), return_logprobs=True)
        return ours, theirs

    def greedy(sampler):
        return sampler.sample(ids, mask, 20, EOS, PAD, 0.0)[0].tolist()

    ours, theirs = both()
    if family == "gpt2":  # packed linear layers in the HF forward: bit for bit
        assert ours[0].tolist() == theirs[0].tolist() and torch.equal(ours[2], theirs[2])
    else:  # PackedLlama: eager attention's bf16 numerics where the copy runs sdpa's
        assert greedy(decoder) == greedy(plain)
        # the same draws pick the same tokens until a bf16 difference crosses a boundary
        agree = (ours[0] == theirs[0]).long().cumprod(1).bool()
        assert agree[:, :4].all()
        torch.testing.assert_close(ours[2][agree], theirs[2][agree], rtol=0, atol=0.05)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():  # an optimizer step on the fp32 model
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    stale, _ = both()
    decoder.sync()
    plain.sync()
    ours, theirs = both()
    if family == "gpt2":
        assert ours[0].tolist() == theirs[0].tolist()
    fresh = Decoder(model, dtype=torch.bfloat16).sample(ids, mask, 20, EOS, PAD, 1.0, torch.Generator().manual_seed(3))
    assert fresh[0].tolist() == ours[0].tolist() and stale[0].tolist() != ours[0].tolist()  # sync took the update


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_sampler_logprobs_equal_the_scoring_pass_within_bf16(family):
    """The sampler runs a bf16 copy with a static cache; PPO's scoring pass runs the fp32 model under
    bf16 autocast. Their log-probs of the sampled tokens agree to bf16 precision, so the ratio at the
    first minibatch (scoring pass against itself) is exactly 1 and nothing is biased by the sampler."""
    from rlhf.rollout import response_logprobs

    model = build(family, seed=3)
    ids, mask = prompts()
    tokens, response_mask, sampled = Decoder(model, dtype=torch.bfloat16).sample(
        ids, mask, 16, EOS, PAD, 1.0, torch.Generator().manual_seed(5), return_logprobs=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scored, _ = response_logprobs(model, torch.cat([ids, tokens], 1), torch.cat([mask, response_mask], 1),
                                      tokens, 1.0)
    difference = (scored - sampled).abs()[response_mask.bool()]
    assert difference.mean() < 0.03 and difference.max() < 0.25, (difference.mean(), difference.max())
    assert sampled[response_mask.bool()].lt(0).all()


def test_every_eos_id_ends_a_response_and_the_batch_stops():
    model = build("llama")
    ids, mask = prompts()
    free = Decoder(model).sample(ids, mask, 12, [EOS], PAD, temperature=0.0)[0]
    stops = [free[0, 2].item(), free[1, 4].item()]  # what rows 0 and 1 emit at steps 2 and 4
    tokens, response_mask = Decoder(model).sample(ids, mask, 12, [EOS, *stops], PAD, temperature=0.0)
    for row, (step, stop) in enumerate(zip((2, 4), stops)):
        first = tokens[row].tolist().index(stop)
        assert first <= step and response_mask[row].tolist() == [1] * (first + 1) + [0] * (tokens.shape[1] - first - 1)
        assert tokens[row, first + 1:].eq(PAD).all()


def test_batch_stops_once_every_row_has_ended():
    model = build("llama")
    ids, mask = prompts()
    with torch.no_grad():  # EOS is always the most likely token
        bias = torch.zeros(VOCAB).index_fill(0, torch.tensor(EOS), 1e4)
        model.get_output_embeddings().bias = torch.nn.Parameter(bias)
    tokens, response_mask = Decoder(model).sample(ids, mask, 12, EOS, PAD, temperature=1.0)
    assert tokens.shape == (3, 1) and tokens.eq(EOS).all() and response_mask.eq(1).all()


def test_compiled_step_is_compiled_once_per_bucket():
    """With the defaults PPO uses: a batch of 3 rows then one of 2 (padded to the largest seen, 3),
    prompts of 7 and 5 tokens (padded to 32): one shape, one compilation, and no recompilation on
    later calls (the PPO loop's guarantee)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    model = build("llama")
    decoder = Decoder(model, compile=True)
    ids, mask = prompts()
    first = decoder.sample(ids, mask, 6, EOS, PAD, 0.0)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1 and decoder._step is not decoder._decode_step  # it compiled, and did not fall back
    decoder.sample(ids[:2, 2:], mask[:2, 2:], 6, EOS, PAD, 0.0)
    again = decoder.sample(ids, mask, 6, EOS, PAD, 0.0)
    assert counters["stats"]["unique_graphs"] == compiled
    assert again[0].tolist() == first[0].tolist() == Decoder(model).sample(ids, mask, 6, EOS, PAD, 0.0)[0].tolist()


def test_a_compiler_failure_falls_back_to_the_eager_step_and_says_so_once(monkeypatch, caplog):
    import rlhf.decode

    def broken_compile(function, **_):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(rlhf.decode, "_NOTED", set())
    model = build("llama")
    ids, mask = prompts()
    decoder = Decoder(model, compile=True)
    with caplog.at_level("WARNING", logger="rlhf.decode"):
        ours = decoder.sample(ids, mask, 8, EOS, PAD, temperature=0.0)[0]
        decoder.sample(ids, mask, 8, EOS, PAD, temperature=0.0)
    assert ours.tolist() == Decoder(model).sample(ids, mask, 8, EOS, PAD, temperature=0.0)[0].tolist()
    notes = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(notes) == 1 and "no C++ compiler" in notes[0] and "decoding eagerly" in notes[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_decode_equals_generate_and_is_captured_once_per_bucket():
    from torch._dynamo.utils import counters

    from rlhf.rollout import response_logprobs

    torch._dynamo.reset()
    model = build("llama").cuda()
    ids, mask = (t.cuda() for t in prompts())
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                            eos_token_id=EOS, pad_token_id=PAD)[:, ids.shape[1]:]
    decoder = Decoder(model, batch_bucket=4, prompt_bucket=16)
    assert decoder.compile and decoder._graphs  # the default on a GPU: CUDA graphs
    ours = decoder.sample(ids, mask, 10, EOS, PAD, temperature=0.0)[0]
    assert decoder._step is not decoder._decode_step  # compiled, no fallback
    assert ours.tolist() == theirs.tolist()
    compiled = counters["stats"]["unique_graphs"]
    decoder.sample(ids[:2, 2:], mask[:2, 2:], 10, EOS, PAD, temperature=1.0)
    assert counters["stats"]["unique_graphs"] == compiled
    bf16 = Decoder(model, dtype=torch.bfloat16)
    tokens, response_mask, sampled = bf16.sample(ids, mask, 16, EOS, PAD, 1.0,
                                                 torch.Generator(device="cuda").manual_seed(5), return_logprobs=True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        scored, _ = response_logprobs(model, torch.cat([ids, tokens], 1), torch.cat([mask, response_mask], 1),
                                      tokens, 1.0)
    difference = (scored - sampled).abs()[response_mask.bool()]
    assert difference.mean() < 0.03 and difference.max() < 0.25, (difference.mean(), difference.max())
