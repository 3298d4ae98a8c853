"""Scalar heads, padding invariance, the K-forward RM loss, sampling and dropout."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.data.collate import collate_ranked, encode_comparisons, encode_prompt, pad
from rlhf.data.records import Comparison
from rlhf.decode import sample_responses
from rlhf.losses import ranking_loss, response_lm_loss
from rlhf.models import (
    ResponseLM,
    last_token_index,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    positions_from_mask,
    sequence_scores,
)
from rlhf.train.common import add_residual_dropout
from rlhf.train.reward import ranked_scores


def test_scalar_head_init_and_last_token_read(tiny_path):
    tokenizer = load_tokenizer(tiny_path)
    model = load_scalar_model(tiny_path, tokenizer).eval()
    head = model.hf.score.weight
    assert head.shape == (1, 256)
    assert head.std().item() == pytest.approx(1 / math.sqrt(257), rel=0.15)
    ids, mask = pad([[5, 6, 7, 8], [5, 6]], tokenizer.pad_token_id, side="right")
    assert last_token_index(mask).tolist() == [3, 1]
    with torch.no_grad():
        values = model(ids, mask)
        alone = model(torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long))
        scores = sequence_scores(values, mask, bias=0.5)
    assert scores[1].item() == pytest.approx(alone[0, 1].item() + 0.5, abs=1e-5)  # read at the real end, not pad


def test_left_padding_does_not_change_real_logits(tiny_path):
    model = load_causal_lm(tiny_path).eval()
    ids, mask = pad([[10, 11, 12, 13], [20, 21]], pad_id=258, side="left")
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        alone = model(input_ids=torch.tensor([[20, 21]])).logits
    assert torch.allclose(batched[1, 2:], alone[0], atol=1e-5)


def test_k_forwards_equal_naive_all_pairs(tiny_path):
    tokenizer = load_tokenizer(tiny_path)
    model = load_scalar_model(tiny_path, tokenizer).eval()
    torch.nn.init.normal_(model.hf.score.weight, std=0.5)  # make scores spread out
    comparisons = [Comparison([{"role": "user", "content": "a"}], ["x", "yy", "zzz", "w"], [1, 2, 2, 3]),
                   Comparison([{"role": "user", "content": "bb"}], ["p", "qqqq"], [2, 1])]
    batch = collate_ranked(encode_comparisons(tokenizer, comparisons, 64), tokenizer.pad_token_id)
    with torch.no_grad():
        loss, _ = ranking_loss(ranked_scores(model, batch), batch["ranks"], batch["valid"])
        naive_per_prompt = []
        for example in encode_comparisons(tokenizer, comparisons, 64):
            pair_losses = []
            for i, j in ((i, j) for i in range(len(example.ranks)) for j in range(len(example.ranks))):
                if example.ranks[i] < example.ranks[j]:  # forward each pair on its own
                    ids, mask = pad([example.sequences[i], example.sequences[j]], tokenizer.pad_token_id)
                    better, worse = sequence_scores(model(ids, mask), mask)
                    pair_losses.append(-torch.nn.functional.logsigmoid(better - worse))
            naive_per_prompt.append(torch.stack(pair_losses).mean())
    assert loss.item() == pytest.approx(torch.stack(naive_per_prompt).mean().item(), abs=1e-5)


def test_greedy_sampling_matches_hf_generate(tiny_path):
    model = load_causal_lm(tiny_path).eval()
    tokenizer = load_tokenizer(tiny_path)
    ids, mask = pad([[60, 61, 62, 63, 64], [70, 71]], tokenizer.pad_token_id, side="left")
    ours, ours_mask = sample_responses(model, ids, mask, 12, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id, temperature=0.0)
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
    assert ours.tolist() == theirs.tolist()
    assert ours_mask.shape == ours.shape


def test_sampling_stops_at_eos_and_masks_after_it(tiny_path):
    model = load_causal_lm(tiny_path).eval()
    tokenizer = load_tokenizer(tiny_path)
    eos, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    calls = []

    def force_eos_in_row_0_at_step_2(module, args, output):
        calls.append(1)
        if len(calls) == 3:  # prefill, step 1, step 2 → the third new token of row 0 is EOS
            output = output.clone()
            output[0, -1] = -1e4
            output[0, -1, eos] = 1e4
        return output

    model.lm_head.register_forward_hook(force_eos_in_row_0_at_step_2)
    ids, mask = pad([[60, 61], [70]], pad_id, side="left")
    tokens, response_mask = sample_responses(model, ids, mask, 6, eos, pad_id, temperature=0.0)
    assert tokens.shape == (2, 6)
    assert tokens[0, 2].item() == eos and tokens[0, 3:].tolist() == [pad_id] * 3
    assert response_mask[0].tolist() == [1, 1, 1, 0, 0, 0]  # up to and including the EOS
    assert response_mask[1].tolist() == [1] * 6 and eos not in tokens[1].tolist()


def test_sampled_tokens_follow_the_distribution_across_blocks_and_never_take_an_impossible_token():
    """Inversion by blocks of 4 over 10 tokens (three blocks, the last padded): the frequencies are
    the softmax's; a token at -inf (here whole blocks of them, and the first token) is never drawn."""
    from rlhf.decode import sample_tokens

    probabilities = torch.tensor([0.0, 0.05, 0.3, 0.0, 0.0, 0.15, 0.0, 0.2, 0.0, 0.3])
    logits = torch.log(probabilities).repeat(40000, 1)
    tokens = sample_tokens(logits, 1.0, torch.Generator().manual_seed(0), block=4)
    counts = torch.bincount(tokens, minlength=10) / 40000
    assert counts.tolist() == pytest.approx(probabilities.tolist(), abs=0.01)
    assert counts[probabilities == 0].sum() == 0
    hot = sample_tokens(logits * 0.5, 2.0, torch.Generator().manual_seed(1), block=4)  # T = 2 on logits/2: ∝ p^¼
    expected = probabilities ** 0.25 / (probabilities ** 0.25).sum()
    counts = torch.bincount(hot, minlength=10) / 40000
    assert counts.tolist() == pytest.approx(expected.tolist(), abs=0.01)
    assert sample_tokens(logits[:2], 0.0, None).tolist() == [2, 2]  # greedy: the first of the largest


def test_a_uniform_number_at_a_block_edge_never_draws_an_impossible_token(monkeypatch):
    """Uniform numbers forced just below every block's upper edge and at the ends of [0, 1), where
    the block sums and the sums within a block round differently: the token drawn always has
    non-zero probability, though the last token of every block (and the padding after the
    vocabulary) has none."""
    import rlhf.decode as decode

    torch.manual_seed(0)
    logits = torch.randn(1, 37) * 4
    logits[0, 3::4] = float("-inf")  # the last token of every 4-token block
    logits[0, 36] = float("-inf")  # and the last real token (the final block is padded)
    probs = torch.softmax(logits.double(), -1).view(-1)
    edges = torch.nn.functional.pad(probs, (0, 3)).view(-1, 4).sum(-1).cumsum(0) / probs.sum()
    draws = [0.0, 1 - 2**-53] + [float(edge) - step for edge in edges for step in (1e-17, 1e-16, 1e-15, 1e-12)]
    for draw in draws:
        monkeypatch.setattr(decode.torch, "rand", lambda *_, value=draw, **kwargs: torch.full((1, 1), value,
                                                                                              dtype=kwargs["dtype"]))
        token = int(decode.sample_tokens(logits, 1.0, None, block=4))
        assert probs[token] > 0, (draw, token)


def test_a_given_uniform_number_picks_the_first_token_whose_cumulative_probability_exceeds_it():
    """Inversion with each row's number given: probabilities 0.1, 0.2, 0.7 (blocks of 2, the second
    padded) have cumulative sums 0.1, 0.3, 1.0, so 0.05 → token 0, 0.15 → 1, 0.31 → 2, 0.999 → 2."""
    from rlhf.decode import sample_tokens

    logits = torch.log(torch.tensor([0.1, 0.2, 0.7])).repeat(4, 1)
    uniform = torch.tensor([0.05, 0.15, 0.31, 0.999], dtype=torch.float64)
    assert sample_tokens(logits, 1.0, None, block=2, uniform=uniform).tolist() == [0, 1, 2, 2]


def test_a_prompts_response_does_not_depend_on_the_batch_it_is_sampled_in(tiny_path, monkeypatch):
    """``generate`` samples prompt i with its own uniform numbers: the same responses one at a
    time, two at a time and all together, and, in a list that starts with other prompts, the same
    response for the prompt at the same index only. In fp32: in bf16 another batch's shapes can
    round a logit differently and flip a draw that falls within rounding of a token's edge."""
    import contextlib

    import rlhf.generate
    from rlhf.generate import generate

    monkeypatch.setattr(rlhf.generate, "inference_dtype", lambda: None)
    monkeypatch.setattr(rlhf.generate, "inference_autocast", contextlib.nullcontext)

    prompts = ["Say words about cats 1.", "Say words about rain 22.", "Say words about a city 333."]
    alone = generate(tiny_path, prompts, 12, 1.0, seed=5, batch_size=1)
    assert generate(tiny_path, prompts, 12, 1.0, seed=5, batch_size=2) == alone
    # batched in order of length, answered in the order given (the longest first, then the two shortest):
    # prompt i of the list drawn with row i of the seed's uniform numbers, as the decoder samples it alone
    mixed = [prompts[2], prompts[0], prompts[1]]
    tokenizer = load_tokenizer(tiny_path)
    decoder = rlhf.generate.sampling_decoder(load_causal_lm(tiny_path, tokenizer=tokenizer))
    uniforms = rlhf.generate.prompt_uniforms(5, len(mixed), 12)
    encoded = [encode_prompt(tokenizer, [{"role": "user", "content": p}]) for p in mixed]
    one_at_a_time = []
    for i, prompt in enumerate(encoded):
        ids = torch.tensor([prompt])
        out, out_mask = decoder.sample(ids, torch.ones_like(ids), 12, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                                       1.0, uniforms=uniforms[i:i + 1])
        one_at_a_time.append(tokenizer.decode(out[0][out_mask[0].bool()], skip_special_tokens=True).strip())
    assert len(set(one_at_a_time)) == 3
    batches = []
    sample = rlhf.generate.Decoder.sample
    monkeypatch.setattr(rlhf.generate.Decoder, "sample",
                        lambda self, ids, mask, *a, **k: batches.append(mask.sum(1).tolist()) or sample(self, ids, mask,
                                                                                                   *a, **k))
    assert generate(tiny_path, mixed, 12, 1.0, seed=5, batch_size=2) == one_at_a_time
    lengths = [len(e) for e in encoded]
    assert batches == [sorted(lengths)[:2], [lengths[0]]]
    assert generate(tiny_path, prompts, 12, 1.0, seed=5, batch_size=16) == alone
    assert len(set(alone)) == 3 and all(alone)
    assert generate(tiny_path, prompts[::-1], 12, 1.0, seed=5)[1] == alone[1]  # index 1 in both lists
    assert generate(tiny_path, prompts, 12, 1.0, seed=6) != alone


def test_residual_dropout_active_in_train_only(tiny_path):
    model = load_causal_lm(tiny_path, dropout=0.2)
    handles = add_residual_dropout(model, 0.2)
    assert len(handles) == 2 * model.config.num_hidden_layers
    ids = torch.tensor([[1, 2, 3, 4]])
    model.train()
    assert not torch.allclose(model(input_ids=ids).logits, model(input_ids=ids).logits)
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_checkpoint_reloads_with_plain_transformers(tiny_path, tmp_path):
    model = load_causal_lm(tiny_path)
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_response_lm_equals_the_full_logits_loss_and_its_gradients(tiny_path):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_path)
    input_ids = torch.randint(0, 250, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 15:] = 0  # right padding
    loss_mask = torch.zeros_like(input_ids)
    loss_mask[0, 5:] = 1
    loss_mask[1, 8:15] = 1
    loss_mask[2, 19:] = 1  # a one-token response
    full = response_lm_loss(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids, loss_mask)
    full.backward()
    expected_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    selective = ResponseLM(model)(input_ids, attention_mask, loss_mask)
    selective.backward()
    assert selective.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, expected_grad, rtol=1e-4, atol=1e-6)


def _sequence_classifier(tiny_path, folder, num_labels=1):
    """A reward model saved by plain transformers (as TRL's RewardTrainer does): no rlhf bias in its config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_path, num_labels=num_labels)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_path).pad_token_id
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(folder)
    return model


def test_a_reward_model_saved_elsewhere_keeps_its_trained_head(tiny_path, tmp_path):
    from rlhf.models import REWARD_BIAS_KEY, load_scalar_model, scalar_head

    saved = _sequence_classifier(tiny_path, tmp_path / "rm")
    loaded = load_scalar_model(str(tmp_path / "rm"), trained=True)
    assert torch.equal(scalar_head(loaded.hf).weight, scalar_head(saved).weight)  # not re-initialised
    assert getattr(loaded.hf.config, REWARD_BIAS_KEY) == 0.0


def test_a_causal_lm_is_no_reward_model_where_one_is_needed(tiny_path, tmp_path):
    from rlhf.data.records import DataError
    from rlhf.models import load_scalar_model

    with pytest.raises(DataError, match="not a reward model .*LlamaForCausalLM"):
        load_scalar_model(tiny_path, trained=True)
    load_scalar_model(tiny_path)  # the reward stage starts from one: a fresh head


def test_models_of_the_wrong_kind_are_one_line_errors(tiny_path, tmp_path):
    from rlhf.data.records import DataError
    from rlhf.models import load_causal_lm, load_scalar_model

    _sequence_classifier(tiny_path, tmp_path / "two", num_labels=2)
    with pytest.raises(DataError, match="a reward model has one output; this LlamaForSequenceClassification has "
                                        "num_labels 2"):
        load_scalar_model(str(tmp_path / "two"))
    with pytest.raises(DataError, match="a LlamaForSequenceClassification is not a causal LM"):
        load_causal_lm(str(tmp_path / "two"))


def test_rows_are_grouped_to_minimise_padded_tokens_plus_a_cost_per_forward():
    """Four rows of a batch of prompts left-padded to 5 and responses right-padded to 3: prompt
    lengths 5, 2, 2, 1 and response lengths 1, 3, 3, 1. With a forward costing 4 tokens, the split
    {row 0} | {rows 1, 2, 3} costs (1·(5 + 1) + 4) + (3·(2 + 3) + 4) = 29, the least (one group:
    4·(5 + 3) + 4 = 36; {0} | {1, 2} | {3}: 10 + 14 + 6 = 30). At 100 a token, one group."""
    from rlhf.rollout import row_groups

    query_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1]])
    response_mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]])
    groups = row_groups(query_mask, response_mask, overhead_tokens=4)
    assert [(sorted(g.rows.tolist()), g.start, g.stop) for g in groups] == [([0], 0, 6), ([1, 2, 3], 3, 8)]
    (whole,) = row_groups(query_mask, response_mask, overhead_tokens=100)
    assert (sorted(whole.rows.tolist()), whole.start, whole.stop) == ([0, 1, 2, 3], 0, 8)
    (whole,) = row_groups(query_mask, response_mask, overhead_tokens=None)
    assert (whole.start, whole.stop) == (0, 8)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_disable_dropout_makes_train_mode_forwards_identical(family):
    """GPT-2's dropout lives in nn.Dropout modules built from resid/embd/attn_pdrop (setting a config
    field after the build changes nothing); Llama's attention keeps attention_dropout as a float.
    In train mode (as PPO's update runs with checkpointing) two forwards differ until it is off."""
    from transformers import GPT2Config, LlamaConfig

    from rlhf.rollout import response_logprobs
    from rlhf.train.common import disable_dropout

    torch.manual_seed(0)
    config = (GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64) if family == "gpt2" else
              LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, attention_dropout=0.3))
    model = AutoModelForCausalLM.from_config(config).train()
    ids, mask = torch.randint(3, 64, (2, 12)), torch.ones(2, 12, dtype=torch.long)

    def twice():
        return [response_logprobs(model, ids, mask, ids[:, -5:], 1.0)[0] for _ in range(2)]

    first, second = twice()
    assert not torch.equal(first, second)  # dropout is really on in train mode
    disable_dropout(model)
    first, second = twice()
    assert model.training and torch.equal(first, second)
    assert all(value == 0.0 for key, value in model.config.to_dict().items()
               if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_train_layers_freezes_the_embeddings_and_lower_blocks_and_the_backward_stops_there(family):
    from transformers import GPT2Config, LlamaConfig

    from rlhf.config import ConfigError
    from rlhf.models import train_top_layers

    torch.manual_seed(0)
    config = (GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64) if family == "gpt2" else
              LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, tie_word_embeddings=False))
    model = AutoModelForCausalLM.from_config(config)
    assert train_top_layers(model, 1) == 2
    blocks = model.model.layers if family == "llama" else model.transformer.h
    ids = torch.randint(3, 64, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        in_top = any(param is p for p in blocks[2].parameters())
        below = any(param is p for block in blocks[:2] for p in block.parameters())
        embedding = any(param is p for m in model.modules() if isinstance(m, torch.nn.Embedding)
                        for p in m.parameters())
        if below or embedding:
            assert not param.requires_grad and param.grad is None, name
        elif in_top:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    # an untied output layer still trains; a tied one is the input embedding, frozen with it
    assert (model.lm_head.weight.grad is not None) == (family == "llama")
    with pytest.raises(ConfigError, match="train_layers: must be between 1 and the model's 3 blocks, got 4"):
        train_top_layers(AutoModelForCausalLM.from_config(config), 4)


def test_the_attention_kernel_asked_for_gives_the_same_model_and_is_not_saved(tiny_path, tmp_path):
    """``attn_implementation`` picks transformers' kernel (eager trains faster on a CPU at short lengths):
    the same logits and gradients as the default (sdpa) on a padded batch, nothing of it in the saved
    folder (plain transformers loads it with its own default), and an unknown kernel is one line."""
    from rlhf.data.records import DataError
    from rlhf.models import load_scalar_model

    torch.manual_seed(0)
    input_ids = torch.randint(0, 250, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    loss_mask = torch.zeros_like(input_ids)
    loss_mask[:, 6:9] = 1
    results = {}
    for kernel in (None, "eager"):
        model = load_causal_lm(tiny_path, attn_implementation=kernel)
        assert model.config._attn_implementation == (kernel or "sdpa")
        loss = ResponseLM(model)(input_ids, attention_mask, loss_mask)
        loss.backward()
        results[kernel] = (loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert results["eager"][0] == pytest.approx(results[None][0], rel=1e-5)
    torch.testing.assert_close(results["eager"][1], results[None][1], rtol=1e-4, atol=1e-6)
    assert load_scalar_model(tiny_path, attn_implementation="eager").hf.config._attn_implementation == "eager"

    model.save_pretrained(tmp_path / "saved")
    assert "attn" not in (tmp_path / "saved" / "config.json").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config._attn_implementation == "sdpa"
    with pytest.raises(DataError, match=rf"^{tiny_path}: cannot be loaded \(.*attn_implementation=\"bogus\"") as error:
        load_causal_lm(tiny_path, attn_implementation="bogus")
    assert "\n" not in str(error.value)


def test_unset_attention_is_eager_on_a_cpu_for_rows_of_at_most_192_tokens_and_the_default_elsewhere(
        tiny_path, tmp_path):
    """``attn_implementation: null`` resolves by device and row length (CPU flash-attention's backward
    is the slower one at short lengths, BENCHMARKS.md); one asked for is kept everywhere. Every stage
    loads the models it trains with what it returns (a spy on its loader, stopped there)."""
    from rlhf.models import training_attention

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert training_attention(None, 192, cpu) == "eager"
    assert training_attention(None, 193, cpu) is None
    assert training_attention(None, 128, gpu) is None
    assert training_attention("sdpa", 128, cpu) == "sdpa"
    assert training_attention("flash_attention_2", 4096, gpu) == "flash_attention_2"

    from rlhf.config import load_config
    from rlhf.data.synthetic import write_synthetic_data
    from rlhf.train import dpo, ppo, reward, sft

    class Loaded(Exception):
        pass

    def spy(*args, attn_implementation=None, **kwargs):
        raise Loaded(attn_implementation)

    data = write_synthetic_data(tmp_path / "data", n_demos=16, n_comparisons=16, n_prompts=8)
    for stage, module, loader, records in (("sft", sft, "load_causal_lm", "data=[{demonstrations}]"),
                                           ("reward", reward, "load_scalar_model", "data=[{comparisons}]"),
                                           ("dpo", dpo, "load_causal_lm", "data=[{comparisons}]"),
                                           ("ppo", ppo, "load_causal_lm", "prompts=[{prompts}]")):
        here = None if torch.cuda.is_available() else "eager"  # the stage trains on its accelerator's device
        for length, asked, expected in ((128, None, here), (256, None, None), (128, "sdpa", "sdpa")):
            settings = [f"model={tiny_path}", records.format(**data), f"max_length={length}",
                        f"output_dir={tmp_path / stage / str(length) / str(asked)}"]
            if stage == "ppo":
                settings += [f"reward_model={tiny_path}", "max_prompt_length=64", "max_new_tokens=16", "ptx_coef=0"]
            config = load_config(stage, [], settings + ([f"attn_implementation={asked}"] if asked else []))
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(module, loader, spy)
                with pytest.raises(Loaded) as loaded:
                    getattr(module, f"train_{stage}")(config)
            assert loaded.value.args == (expected,), (stage, length, asked)
