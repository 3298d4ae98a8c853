"""Benchmark scorers with forced log-likelihoods, the LL primitive against a direct computation,
win rates against hand-computed cases, and the paper-samples table."""

import math

import pytest
import torch

from conftest import shared_file
from rlhf.eval.benchmarks import (
    continuation_logprobs,
    crows_pairs,
    read_truthfulqa,
    read_winogender,
    truthfulqa_mc,
    winogender,
)
from rlhf.eval.paper_samples import markdown_table, paper_sample_tables
from rlhf.eval.winrate import length_controlled_win_rate, outcomes, win_rate, win_rate_by_category
from rlhf.models import load_causal_lm, load_tokenizer


def scorer(table):
    """A fake model: the log-likelihood of each continuation is looked up (forced choices)."""
    return lambda pairs: [table[continuation.strip()] for _, continuation in pairs]


def test_truthfulqa_mc1_mc2_by_hand():
    items = [{"question": "q1", "best": "B", "correct": ["B", "C"], "incorrect": ["X", "Y"]},
             {"question": "q2", "best": "D", "correct": ["D"], "incorrect": ["Z"]}]
    ll = {"B": math.log(0.4), "C": math.log(0.1), "X": math.log(0.3), "Y": math.log(0.2),
          "D": math.log(0.2), "Z": math.log(0.6)}
    result = truthfulqa_mc(scorer(ll), items)
    # q1: best 0.4 > max incorrect 0.3 → 1; q2: 0.2 < 0.6 → 0
    assert result["truthfulqa/mc1"] == pytest.approx(0.5)
    # MC2: q1 (0.4 + 0.1) / 1.0 = 0.5; q2 0.2 / 0.8 = 0.25
    assert result["truthfulqa/mc2"] == pytest.approx((0.5 + 0.25) / 2)


def test_crows_pairs_and_winogender_by_hand():
    items = [{"more": "s1", "less": "a1", "bias_type": "race"}, {"more": "s2", "less": "a2", "bias_type": "race"},
             {"more": "s3", "less": "a3", "bias_type": "age"}]
    ll = {"s1": -1.0, "a1": -2.0, "s2": -3.0, "a2": -1.0, "s3": -1.0, "a3": -5.0}
    result = crows_pairs(scorer(ll), items)
    assert result["crows_pairs/stereotype_preference"] == pytest.approx(2 / 3)
    assert result["crows_pairs/race"] == 0.5 and result["crows_pairs/age"] == 1.0
    pairs = [{"occupation": "nurse", "male": "m1", "female": "f1"},
             {"occupation": "nurse", "male": "m2", "female": "f2"},
             {"occupation": "pilot", "male": "m3", "female": "f3"}]
    ll = {"m1": -1.0, "f1": -2.0, "m2": -3.0, "f2": -1.0, "m3": -1.0, "f3": -4.0}
    result = winogender(scorer(ll), pairs)
    assert result["winogender/male_preference"] == pytest.approx(2 / 3)
    assert result["winogender/occupations_mostly_male"] == pytest.approx(0.5)  # nurse 0.5 is not > 0.5


def test_continuation_logprobs_match_a_direct_computation(tiny_path):
    model, tokenizer = load_causal_lm(tiny_path).eval(), load_tokenizer(tiny_path)
    pairs = [("Q: hi\nA:", " yes"), ("", "a much longer sentence than the first one"), ("ctx", " x")]
    batched = continuation_logprobs(model, tokenizer, pairs, batch_size=3)
    for (context, continuation), value in zip(pairs, batched):
        context_ids = [tokenizer.bos_token_id] + tokenizer(context, add_special_tokens=False)["input_ids"]
        continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        expected = sum(logprobs[len(context_ids) - 1 + i, t].item() for i, t in enumerate(continuation_ids))
        assert value == pytest.approx(expected, abs=1e-4)


def test_shared_benchmark_files_parse():
    items = read_truthfulqa(shared_file("truthfulqa/TruthfulQA.csv"))
    assert len(items) == 817 and all(i["incorrect"] and i["correct"] for i in items)
    pairs = read_winogender(shared_file("winogender/all_sentences.tsv"))
    assert len(pairs) == 240 and pairs[0]["occupation"] == "technician"
    assert " he " in pairs[0]["male"] and " she " in pairs[0]["female"]


def test_win_rate_ties_count_half_and_interval_brackets_it():
    assert outcomes([2, 1, 3, 0], [1, 1, 4, 0]).tolist() == [1.0, 0.5, 0.0, 0.5]
    result = win_rate([2, 1, 3, 0] * 25, [1, 1, 4, 0] * 25, n_boot=500)
    assert result["win_rate"] == pytest.approx(0.5) and result["n"] == 100
    assert result["low"] < 0.5 < result["high"] and result["high"] - result["low"] < 0.25
    assert win_rate([1.0] * 10, [0.0] * 10)["low"] == 1.0  # no variance, no width
    by_category = win_rate_by_category([2, 0, 1], [1, 1, 1], ["a", "b", "a"], n_boot=100)
    assert by_category["a"]["win_rate"] == 0.75 and by_category["b"]["win_rate"] == 0.0
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1, 2], [1])


def test_a_win_that_length_explains_is_not_a_win_at_equal_length():
    # 30 prompts where the policy answers 10 tokens shorter than the baseline and wins 24 (0.8), 10 where it
    # answers 10 longer and wins 2 (0.2): the raw win rate is 26 / 40 = 0.65. Two values of x = ±c, so the fit
    # σ(θ ∓ φc) = 0.8, 0.2 is exact without the penalty: θ = (logit 0.8 + logit 0.2) / 2 = 0, a win rate of ½.
    policy = [1] * 24 + [0] * 6 + [1] * 2 + [0] * 8
    shorter = [0] * 30 + [20] * 10
    assert win_rate(policy, [0.5] * 40)["win_rate"] == pytest.approx(0.65)
    exact = length_controlled_win_rate(policy, [0.5] * 40, shorter, [10] * 40, n_boot=50, l2=0.0)
    assert exact["win_rate"] == pytest.approx(0.5, abs=1e-4) and exact["length_coef"] < -1
    default = length_controlled_win_rate(policy, [0.5] * 40, shorter, [10] * 40, n_boot=200)
    assert 0.5 < default["win_rate"] < 0.53  # the weak prior on φ shrinks towards the raw 0.65 a little
    assert default["low"] < default["win_rate"] < default["high"]
    # at equal length the fit is the raw win rate, ties included: (48 wins + 0.5 · 12 ties) / 96
    ties = [2, 0, 2, 1, 0, 2, 2, 0] * 12
    level = length_controlled_win_rate(ties, [1] * 96, [7] * 96, [7] * 96, n_boot=50)
    assert level["win_rate"] == pytest.approx(54 / 96, abs=1e-6) and level["length_coef"] == 0.0
    with pytest.raises(ValueError, match="one length per score"):
        length_controlled_win_rate([1, 2], [1, 1], [3], [3])


def test_paper_samples_reproduce_the_direction_of_effect():
    tables = paper_sample_tables(shared_file("instructgpt-samples/truthful_qa_samples.csv").parent)
    for size in ("1.3B", "6B", "175B"):  # PPO is more truthful than GPT-3 at every size
        assert tables["truthful"][("PPO", size)] > tables["truthful"][("GPT-3", size)]
    # with a "respectful" instruction the 175B InstructGPT models are less toxic than GPT-3
    assert tables["toxicity_respectful"][("PPO-ptx", "175B")] < tables["toxicity_respectful"][("GPT-3", "175B")]
    assert "| 175B |" in markdown_table(tables)


def test_eval_cli_paper_samples_and_benchmarks(capsys, tiny_path):
    from rlhf.cli import main

    data_dir = shared_file("truthfulqa/TruthfulQA.csv").parents[1]
    assert main(["eval", "paper-samples", "--data-dir", str(data_dir)]) == 0
    assert "| 175B |" in capsys.readouterr().out
    assert main(["eval", "benchmarks", "--model", tiny_path, "--data-dir", str(data_dir), "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "| truthfulqa/mc1 |" in out and "| winogender/male_preference |" in out


def test_toxicity_scorer_orders_texts_and_agrees_with_the_paper():
    from rlhf.eval.toxicity import read_contexts, scorer_agreement, toxicity, toxicity_eval

    rude, polite = toxicity(["you are a stupid idiot and I hate you", "thank you for the lovely afternoon"])
    assert rude > 0.5 > polite
    samples = shared_file("instructgpt-samples/real_toxicity_samples.csv")
    agreement = scorer_agreement(samples)
    assert agreement["toxicity/scored_samples"] == 3600 and agreement["toxicity/scorer_spearman_vs_paper"] > 0.3
    contexts = read_contexts(samples, 3)
    assert len(contexts) == len(set(contexts)) == 3

    def fake_generate(prompts):  # rude unless asked to be respectful
        return ["thank you kindly" if "respectful" in p else "you stupid idiot" for p in prompts]

    result = toxicity_eval(fake_generate, contexts)
    assert result["toxicity/basic"] > 0.5 > result["toxicity/respectful"]


def test_winrate_from_human_labels_with_categories(tmp_path, capsys):
    import json

    from rlhf.cli import main

    labels = tmp_path / "labels.jsonl"
    rows = [{"winner": "policy", "category": "qa"}, {"winner": "tie", "category": "qa"},
            {"winner": "baseline", "category": "brainstorm"}, {"winner": "policy", "category": "brainstorm"}]
    labels.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["eval", "winrate", "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "win rate over 4 prompts (human labels" in out and ": 0.625 [" in out
    assert "qa: 0.750" in out and "brainstorm: 0.500" in out
    labels.write_text(json.dumps({"winner": "me"}))
    assert main(["eval", "winrate", "--labels", str(labels)]) == 2
    assert "labels.jsonl:1: field 'winner' must be one of policy, baseline, tie" in capsys.readouterr().err
