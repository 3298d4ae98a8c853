"""The model matrix: every family people fine-tune (tests/families.py), through our fast paths and
through every stage. Each fast path is checked against the model's own forward — the SFT loss
against its ``labels`` loss, response log-probs against ``log_softmax`` of a plain unpadded forward,
the reward against a plain ``AutoModelForSequenceClassification``, greedy samples against
``generate`` — and then SFT → RM → PPO → evaluation → labeling's sampling run on it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from families import FAMILIES, build_family
from rlhf.data.collate import collate_sft, encode_demonstrations, encode_prompt, encode_response, pad
from rlhf.data.records import Demonstration
from rlhf.decode import Decoder
from rlhf.models import (
    ResponseLM,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    positions_from_mask,
    sequence_scores,
)
from rlhf.rollout import response_logprobs, response_stop_ids
from rlhf.train.common import disable_dropout, enable_activation_checkpointing

CONVERSATIONS = [[{"role": "user", "content": "Say words about cats 12."}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say words about rain."}],
                 [{"role": "user", "content": "Say words about a city 4."}, {"role": "assistant", "content": "sun"},
                  {"role": "user", "content": "More?"}]]
RESPONSES = ["good cat blue", "tree sun rock good good", "milk"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    return request.param, str(build_family(request.param, tmp_path_factory.mktemp(request.param)))


def test_sft_loss_is_the_models_own_labels_loss(family):
    name, path = family
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer=tokenizer).eval()
    demos = [Demonstration(c, r, source=f"x:{i}") for i, (c, r) in enumerate(zip(CONVERSATIONS, RESPONSES))]
    batch = collate_sft(encode_demonstrations(tokenizer, demos, 256), tokenizer.pad_token_id)
    ours = ResponseLM(model)(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
    labels = batch["input_ids"].masked_fill(batch["loss_mask"] == 0, -100)
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_response_logprobs_are_a_plain_forwards_log_softmax(family):
    name, path = family
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer=tokenizer).eval()
    prompts = [encode_prompt(tokenizer, c) for c in CONVERSATIONS]
    responses = [encode_response(tokenizer, r) for r in RESPONSES]
    query, query_mask = pad(prompts, tokenizer.pad_token_id, side="left")
    response, response_mask = pad(responses, tokenizer.pad_token_id)
    ids, mask = torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1)
    with torch.no_grad():
        ours, _ = response_logprobs(model, ids, mask, response, 1.0)
        for row, (prompt, answer) in enumerate(zip(prompts, responses)):
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1]
            theirs = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(answer)[:, None]).squeeze(1)
            torch.testing.assert_close(ours[row, :len(answer)], theirs, rtol=1e-4, atol=1e-5)


def test_rows_forwarded_in_groups_of_their_own_columns_give_the_whole_batchs_numbers_and_gradients(family):
    """PPO's forwards by groups of rows, each cut to the columns its rows use (``row_groups``), give
    the log-probs, entropies, values and rewards of one forward over the whole padded batch, and the
    same gradients: the padding they leave out never mattered."""
    from rlhf.rollout import RolloutEngine, response_values, row_groups

    name, path = family
    torch.manual_seed(3)
    tokenizer = load_tokenizer(path)
    policy = load_causal_lm(path, tokenizer=tokenizer).eval()
    value = load_scalar_model(path, tokenizer).eval()
    prompts = [encode_prompt(tokenizer, c) for c in CONVERSATIONS]
    responses = [encode_response(tokenizer, r) for r in RESPONSES]
    query, query_mask = pad(prompts, tokenizer.pad_token_id, side="left")
    response, response_mask = pad(responses, tokenizer.pad_token_id)
    ids, mask = torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1)
    groups = row_groups(query_mask, response_mask, overhead_tokens=0)
    assert len(groups) > 1 and any(g.start > 0 or g.stop < ids.shape[1] for g in groups)  # really cut
    engine = RolloutEngine(policy, policy, value, value, tokenizer, max_new_tokens=4, temperature=1.0,
                           no_eos_score=None, autocast=torch.autocast("cpu", enabled=False),
                           generator=torch.Generator())
    results = {}
    for layout in ("whole", "groups"):
        by = groups if layout == "groups" else None
        logprobs, entropy = response_logprobs(policy, ids, mask, response, 0.7, by, with_entropy=True)
        values = response_values(value, ids, mask, query.shape[1], by)
        real = response_mask.bool()
        ((logprobs * real).sum() + (values * real).sum()).backward()
        with torch.no_grad():
            scores = engine.reward_scores(ids, mask, response, response_mask, None, by)
        grads = [p.grad.clone() for p in [*policy.parameters(), *value.parameters()] if p.grad is not None]
        policy.zero_grad(), value.zero_grad()
        results[layout] = (logprobs * real, entropy[real], values * real, scores, grads)
    for whole, grouped in zip(*results.values()):
        if isinstance(whole, list):
            assert len(whole) == len(grouped) > 0
            for a, b in zip(whole, grouped):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(grouped, whole, rtol=1e-4, atol=1e-5)


def test_reward_is_a_plain_sequence_classifiers_logit_at_the_last_token(family, tmp_path):
    name, path = family
    torch.manual_seed(1)
    plain = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    plain.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / "rm")
    tokenizer = load_tokenizer(str(tmp_path / "rm"))
    model = load_scalar_model(str(tmp_path / "rm"), tokenizer, trained=True).eval()
    sequences = [encode_prompt(tokenizer, c) + encode_response(tokenizer, r) for c, r in zip(CONVERSATIONS, RESPONSES)]
    ids, mask = pad(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = sequence_scores(model(ids, mask, positions_from_mask(mask)), mask)
        theirs = torch.stack([plain(input_ids=torch.tensor([s])).logits[0, 0] for s in sequences])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_prompt_forwarded_once_scores_as_each_response_in_its_own_sequence(family, attention):
    """The reward model's shared-prompt layout (one row: the prompt, then its K responses, a mask that
    keeps each response to the prompt and itself) gives every response the score of its own sequence."""
    from rlhf.data.collate import Comparison, collate_ranked, encode_comparisons
    from rlhf.train.reward import ranked_scores, shared_prompt_collate, sliding_window

    name, path = family
    torch.manual_seed(2)
    tokenizer = load_tokenizer(path)
    model = load_scalar_model(path, tokenizer).eval()
    if attention == "sdpa" and model.hf.config._attn_implementation == "eager":
        pytest.skip(f"{name} runs eager attention (sdpa takes no soft-capping)")
    model.hf.config._attn_implementation = attention
    comparisons = [Comparison(prompt=c, responses=[r, r[::-1] + " rain", "a"][:2 + i % 2], ranks=[1, 2, 3][:2 + i % 2])
                   for i, (c, r) in enumerate(zip(CONVERSATIONS, RESPONSES))]
    examples = encode_comparisons(tokenizer, comparisons, 512)
    collate, _ = shared_prompt_collate(model.hf, tokenizer.pad_token_id, 512)
    shared = collate(examples)
    window = sliding_window(model.hf.config)
    if window is not None and window < 512:  # the mask has no window: each response keeps its own row
        assert shared["input_ids"].shape[0] == sum(len(c.responses) for c in comparisons)
        examples = encode_comparisons(tokenizer, comparisons, window)  # no sequence longer than the window:
        collate, _ = shared_prompt_collate(model.hf, tokenizer.pad_token_id, window)  # shared again, still exact
        shared = collate(examples)
    assert shared["input_ids"].shape[0] == len(examples)  # one row per prompt
    with torch.no_grad():
        ours = ranked_scores(model, shared)
        theirs = ranked_scores(model, collate_ranked(examples, tokenizer.pad_token_id))
    valid = shared["valid"]
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_dpo_log_probs_with_each_prompt_forwarded_once_are_each_sequences_own(family, attention):
    """DPO's Σ log π(y_k | x) in the reward model's layout (the prompt once, then its K responses) equal
    the log-softmax of a plain forward of each prompt + response alone, summed over the response."""
    from rlhf.data.collate import Comparison, encode_comparisons
    from rlhf.models import SequenceLogProbs
    from rlhf.train.dpo import response_logps
    from rlhf.train.reward import shared_prompt_collate

    name, path = family
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer=tokenizer).eval()
    if attention == "sdpa" and model.config._attn_implementation == "eager":
        pytest.skip(f"{name} runs eager attention (sdpa takes no soft-capping)")
    model.config._attn_implementation = attention
    comparisons = [Comparison(prompt=c, responses=[r, r[::-1] + " rain", "a"][:2 + i % 2], ranks=[1, 2, 3][:2 + i % 2])
                   for i, (c, r) in enumerate(zip(CONVERSATIONS, RESPONSES))]
    window = getattr(model.config, "sliding_window", None) or 512
    examples = encode_comparisons(tokenizer, comparisons, min(window, 512))
    collate, _ = shared_prompt_collate(model, tokenizer.pad_token_id, min(window, 512))
    batch = collate(examples)
    assert batch["input_ids"].shape[0] == len(examples)  # one row per prompt
    with torch.no_grad():
        ours = response_logps(SequenceLogProbs(model), batch)
        for b, example in enumerate(examples):
            start = example.prompt_lengths[0]
            for k, sequence in enumerate(example.sequences):
                logits = model(input_ids=torch.tensor([sequence])).logits[0, start - 1:-1].float()
                theirs = logits.log_softmax(-1).gather(1, torch.tensor(sequence[start:])[:, None]).sum()
                torch.testing.assert_close(ours[b, k], theirs, rtol=1e-4, atol=1e-4)
        assert (ours[~batch["valid"]] == 0).all()


def test_greedy_samples_equal_generate(family):
    name, path = family
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer=tokenizer).eval()
    ids, mask = pad([encode_prompt(tokenizer, c) for c in CONVERSATIONS], tokenizer.pad_token_id, side="left")
    eos = response_stop_ids(tokenizer, model)
    ours, ours_mask = Decoder(model).sample(ids, mask, 10, eos, tokenizer.pad_token_id, temperature=0.0)
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
    width = theirs.shape[1]
    assert torch.equal(ours[:, :width].masked_fill(ours_mask[:, :width] == 0, tokenizer.pad_token_id), theirs)


def test_no_dropout_in_ppos_update_forwards_with_checkpointing(family):
    """PPO's update runs in train mode when checkpointing: two forwards must give the same log-probs."""
    name, path = family
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dropout=0.3, tokenizer=tokenizer)
    disable_dropout(model)
    enable_activation_checkpointing(model)
    model.train()
    ids = torch.tensor([encode_prompt(tokenizer, CONVERSATIONS[0]) + encode_response(tokenizer, RESPONSES[1])])
    mask = torch.ones_like(ids)
    first, second = (response_logprobs(model, ids, mask, ids[:, -4:], 1.0)[0] for _ in range(2))
    assert torch.equal(first, second)


PIPELINE = ["data.synthetic=true", "sft.max_steps=3", "sft.batch_size=8", "sft.dropout=0.0", "sft.max_length=128",
            "reward.max_steps=3", "reward.batch_size=8", "reward.max_length=128", "ppo.total_episodes=16",
            "ppo.rollout_batch_size=8", "ppo.max_new_tokens=8", "ppo.max_prompt_length=64", "ppo.max_length=128",
            "ppo.ptx_coef=0.5", "ppo.ptx_batch_size=2", "ppo.ptx_block_size=32", "ppo.eval_prompts=8",
            "eval.max_new_tokens=6", "eval.perplexity_tokens=256", "eval.perplexity_block_size=64"]


def test_every_stage_runs_and_plain_transformers_loads_what_it_wrote(family, tmp_path):
    from rlhf.config import load_config
    from rlhf.label.load import sample_ranking_tasks
    from rlhf.pipeline import run_pipeline

    name, path = family
    run_dir = tmp_path / "run"
    summary = run_pipeline(load_config("pipeline", overrides=[f"model={path}", *PIPELINE]), run_dir)
    assert summary["ppo"]["steps"] == 2 and set(summary["eval"]["policies"]) == {"base", "sft", "ppo"}
    base_template = load_tokenizer(path).chat_template
    for stage in ("sft", "reward", "ppo"):
        folder = run_dir / stage
        plain = AutoTokenizer.from_pretrained(folder)
        assert plain.chat_template == base_template  # the next stage and plain transformers render the same text
        assert plain.pad_token_id is not None and plain.pad_token_id != plain.eos_token_id
        loader = AutoModelForSequenceClassification if stage == "reward" else AutoModelForCausalLM
        model = loader.from_pretrained(folder)
        assert model.get_input_embeddings().num_embeddings >= len(plain)
    tasks = sample_ranking_tasks(run_dir / "data" / "prompts.jsonl", [str(run_dir / "ppo"), path], k=2,
                                 max_new_tokens=6, temperature=1.0, seed=0)
    assert tasks and all(len(task["responses"]) == 2 for task in tasks)
    assert json.loads((run_dir / "ppo" / "rlhf.json").read_text())["stage"] == "ppo"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: str(build_family(name, root / name)) for name in ("gpt2", "llama", "qwen2")}


def test_a_tokenizer_without_pad_gets_one_that_is_not_eos(folders):
    from rlhf.models import NEW_PAD_TOKEN

    gpt2 = load_tokenizer(folders["gpt2"])  # eos = bos = unk = <|endoftext|>: nothing to reuse, a new token
    assert gpt2.pad_token == NEW_PAD_TOKEN and gpt2.pad_token_id == 360 and len(gpt2) == 361
    model = load_causal_lm(folders["gpt2"], tokenizer=gpt2)
    assert model.get_input_embeddings().num_embeddings == 361 and model.config.pad_token_id == 360
    assert torch.isfinite(model.get_input_embeddings().weight[360]).all()
    llama = load_tokenizer(folders["llama"])  # UNK is reused: no new row
    assert llama.pad_token == "<unk>" and llama.pad_token_id != llama.eos_token_id and len(llama) == 360
    assert load_tokenizer(folders["qwen2"]).pad_token == "<|endoftext|>"  # its own PAD is kept


def test_chat_template_from_the_config_a_string_or_a_file(folders, tmp_path):
    from rlhf.data.records import DataError
    from rlhf.models import PLAIN_CHAT_TEMPLATE, read_chat_template

    assert load_tokenizer(folders["llama"]).chat_template == PLAIN_CHAT_TEMPLATE  # a base model
    text = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    (tmp_path / "t.jinja").write_text(text)
    for given in (text, str(tmp_path / "t.jinja")):
        tokenizer = load_tokenizer(folders["qwen2"], given)  # replaces the tokenizer's own
        assert tokenizer.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True,
                                             tokenize=False) == "[Say words about cats 12.]>"
    with pytest.raises(DataError, match=r"^chat_template: .*missing\.jinja: no such file"):
        read_chat_template(str(tmp_path / "missing.jinja"))


def test_a_tokenizer_of_another_model_is_a_one_line_error(folders, tmp_path):
    from rlhf.data.records import DataError

    small = AutoModelForCausalLM.from_pretrained(folders["llama"])
    small.resize_token_embeddings(300)
    small.save_pretrained(tmp_path / "small")
    AutoTokenizer.from_pretrained(folders["llama"]).save_pretrained(tmp_path / "small")
    with pytest.raises(DataError, match=r"small: the tokenizer has 360 tokens but the model's embeddings only 300"):
        load_causal_lm(str(tmp_path / "small"), tokenizer=load_tokenizer(str(tmp_path / "small")))


def _ppo_config(policy, reward, tmp_path, *extra):
    from rlhf.config import load_config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say words about rain {i}."}) + "\n" for i in range(8)))
    return load_config("ppo", [], [f"model={policy}", f"reward_model={reward}", f"prompts=[{prompts}]",
                                   "ptx_coef=0", "rollout_batch_size=4", "max_new_tokens=6", "max_prompt_length=64",
                                   "max_length=128", "valid_fraction=0", "mixed_precision=fp32",
                                   f"output_dir={tmp_path / 'ppo'}", *extra])


def test_a_reward_model_with_its_own_tokenizer_reads_the_episode_in_its_tokens(folders, tmp_path):
    """Policy: Llama tokenizer, plain template. Reward model: a Qwen2 classifier with ChatML. The
    score is the plain classifier's logit on the text rendered by the reward model's tokenizer."""
    from rlhf.data.records import DataError
    from rlhf.train.ppo import PPOTrainer

    torch.manual_seed(2)
    plain = AutoModelForSequenceClassification.from_pretrained(folders["qwen2"], num_labels=1).eval()
    plain.save_pretrained(tmp_path / "rm")
    theirs_tokenizer = AutoTokenizer.from_pretrained(folders["qwen2"])
    theirs_tokenizer.save_pretrained(tmp_path / "rm")
    with pytest.raises(DataError, match="^ppo.value_model: the reward model .* another vocabulary"):
        PPOTrainer(_ppo_config(folders["llama"], tmp_path / "rm", tmp_path))
    trainer = PPOTrainer(_ppo_config(folders["llama"], tmp_path / "rm", tmp_path, f"value_model={folders['llama']}",
                                     "no_eos_score=null"))
    assert trainer.engine.reward_tokenizer is not None
    prompts = trainer.next_prompts(4)
    batch = trainer.engine.rollout(*zip(*prompts))
    for (_, conversation), response, mask, score in zip(prompts, batch.response_ids, batch.response_mask,
                                                        batch.scores):
        text = trainer.tokenizer.decode(response[mask.bool()], skip_special_tokens=True).strip()
        rendered = theirs_tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        ids = theirs_tokenizer(rendered + text + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = plain(input_ids=torch.tensor([ids])).logits[0, 0]
        assert score.item() == pytest.approx(expected.item(), abs=1e-4)
