"""The whole tiny pipeline on the synthetic task, and what its checkpoints promise."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from processes import cpu_env
from rlhf.checkpoint import is_finished, staged_output
from rlhf.config import SFTConfig, load_config, preset_config_path
from rlhf.data.collate import collate_sft, encode_demonstrations
from rlhf.data.readers import read_demonstrations
from rlhf.generate import generate
from rlhf.models import load_scalar_model, load_tokenizer, sequence_scores
from rlhf.pipeline import data_paths, run_pipeline
from rlhf.train.ppo import PPOTrainer

REQUIRED_PPO_METRICS = {
    "objective/scores", "objective/kl", "objective/kl_coef", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/ptx",
    "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/policy/entropy", "ppo/val/var_explained",
    "time/episodes_per_s",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, preset_cache):
    run_dir = tmp_path_factory.mktemp("tiny-run")
    summary = run_pipeline(load_config("pipeline", [preset_config_path("tiny")]), run_dir)
    return run_dir, summary


def test_reward_model_learns_the_synthetic_preference(tiny_run):
    _, summary = tiny_run
    assert 0 < summary["sft"]["train/loss"] < 1.5 and summary["sft"]["valid/loss"] < 1.0
    assert summary["reward"]["valid/accuracy"] >= 0.9
    assert summary["reward"]["valid_prompts"] >= 40


def test_ppo_raises_the_score_with_bounded_kl(tiny_run):
    _, summary = tiny_run
    ppo = summary["ppo"]
    assert ppo["eval/score_policy"] > ppo["eval/score_sft"] + 3.0
    assert ppo["eval/win_rate_vs_sft"] >= 0.75
    assert 0.0 < ppo["eval/kl_to_sft"] < 40.0


def test_checkpoints_load_with_plain_transformers(tiny_run):
    run_dir, _ = tiny_run
    ids = torch.tensor([[1, 2, 3, 4]])
    for stage in ("sft", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(run_dir / stage)
        assert model(input_ids=ids).logits.shape == (1, 4, model.config.vocab_size)
        assert model.config.attention_dropout == 0.0
        assert (run_dir / stage / "model.safetensors").exists()
        AutoTokenizer.from_pretrained(run_dir / stage)
    reward = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward")
    assert reward.config.num_labels == 1
    assert reward(input_ids=ids).logits.shape == (1, 1)
    for stage in ("sft", "reward", "ppo"):
        meta = json.loads((run_dir / stage / "rlhf.json").read_text())
        assert meta["stage"] == stage and meta["data_fingerprints"] and meta["metrics"]
        splits = json.loads((run_dir / stage / "splits.json").read_text())
        assert splits["train"] and splits["valid"] and not set(splits["train"]) & set(splits["valid"])
        assert all(":" in source for source in splits["train"])  # file:line of each record


def test_metrics_file_has_the_ppo_names(tiny_run):
    run_dir, _ = tiny_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ppo_rows = [r for r in rows if r["run"] == "ppo" and "objective/scores" in r]
    assert len(ppo_rows) == 16
    assert REQUIRED_PPO_METRICS <= set(ppo_rows[0])
    rloo_rows = [r for r in rows if r["run"] == "rloo" and "objective/scores" in r]  # the same stage, no critic
    assert len(rloo_rows) == 16 and rloo_rows[0]["stage"] == "ppo"
    assert REQUIRED_PPO_METRICS - set(rloo_rows[0]) == {"ppo/loss/value", "ppo/val/var_explained"}
    assert {r["stage"] for r in rows} == {"sft", "reward", "ppo", "dpo"}
    assert (run_dir / "config.yaml").exists()


def test_reward_is_normalised_on_demonstrations(tiny_run):
    run_dir, _ = tiny_run
    tokenizer = load_tokenizer(str(run_dir / "reward"))
    model = load_scalar_model(str(run_dir / "reward"), tokenizer).eval()
    demos = read_demonstrations(run_dir / "data" / "demonstrations.jsonl")
    batch = collate_sft(encode_demonstrations(tokenizer, demos, 128), tokenizer.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = sequence_scores(model(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
    assert model.reward_bias != 0.0
    assert abs(scores.mean().item()) < 0.05 * scores.std().item()


def test_first_ppo_minibatch_has_ratio_one_and_zero_kl(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    config = load_config("ppo", [], [
        f"model={run_dir / 'sft'}", f"reward_model={run_dir / 'reward'}", f"prompts=[{run_dir / 'data/prompts.jsonl'}]",
        f"pretraining={run_dir / 'data/pretraining.txt'}", "rollout_batch_size=8", "num_minibatches=1",
        "max_new_tokens=16", "max_prompt_length=64", "max_length=128", "ptx_block_size=32", "ptx_batch_size=2",
        f"output_dir={tmp_path / 'ppo'}"])
    trainer = PPOTrainer(config)
    metrics = trainer.step(trainer.next_prompts(8))
    assert metrics["ppo/policy/approxkl"] == 0.0
    assert metrics["ppo/policy/clipfrac"] == 0.0
    assert metrics["objective/kl"] == 0.0  # policy == reference before the first update
    assert metrics["ppo/loss/ptx"] > 0.0
    second = trainer.step(trainer.next_prompts(8))
    assert second["objective/kl"] != 0.0  # the update moved the policy


def _ppo_trainer(run_dir, tmp_path, *extra):
    config = load_config("ppo", [], [
        f"model={run_dir / 'sft'}", f"reward_model={run_dir / 'reward'}", f"prompts=[{run_dir / 'data/prompts.jsonl'}]",
        "ptx_coef=0", "rollout_batch_size=8", "max_new_tokens=16", "max_prompt_length=64", "max_length=128",
        "mixed_precision=fp32", f"output_dir={tmp_path / 'ppo'}", *extra])
    return PPOTrainer(config)


def test_ppo_draws_its_prompts_in_the_weighted_mix(tiny_run, tmp_path):
    """prompt_weights [1, 1]: half the episodes come from a file of 5 prompts beside the tiny task's
    hundreds, each of the 5 in turn; a file whose prompts cannot be drawn is an error naming it."""
    from rlhf.data.readers import DataError

    run_dir, _ = tiny_run
    task = run_dir / "data/prompts.jsonl"
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"prompt": f"Say the number {i}."}) + "\n" for i in range(5)))
    unweighted = _ppo_trainer(run_dir, tmp_path, f"prompts=[{task},{extra}]", "valid_fraction=0")
    trainer = _ppo_trainer(run_dir, tmp_path, f"prompts=[{task},{extra}]", "prompt_weights=[1,1]",
                           "valid_fraction=0")
    assert len(trainer.train_prompts) == len(unweighted.train_prompts) > 100

    def extra_share(trainer) -> tuple[float, set]:
        drawn = [conversation[-1]["content"] for _ in range(50) for _, conversation in trainer.next_prompts(8)]
        ours = [text for text in drawn if text.startswith("Say the number")]
        return len(ours) / len(drawn), set(ours)

    share, seen = extra_share(trainer)
    assert 0.42 < share < 0.58 and seen == {f"Say the number {i}." for i in range(5)}
    assert extra_share(unweighted)[0] < 0.05  # 5 of the hundreds: their share of the prompts

    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 200}) + "\n")
    with pytest.raises(DataError, match=rf"ppo: prompt_weights\[1\]: {long}: every one of the 1 prompts is "
                                        "longer than 64 tokens"):
        _ppo_trainer(run_dir, tmp_path, f"prompts=[{task},{long}]", "prompt_weights=[1,1]", "valid_fraction=0")


def test_rollout_seed_replicates_ppo_on_the_same_splits(tiny_run, tmp_path):
    """rollout_seed changes the prompt order and sampling noise, not the data splits; set to seed it
    is the default."""
    run_dir, _ = tiny_run
    default, same, other = (_ppo_trainer(run_dir, tmp_path, *extra) for extra in
                            ([], ["rollout_seed=0"], ["rollout_seed=1"]))

    def texts(records):
        return [record.prompt[-1]["content"] for record in records]

    for name in ("train", "valid", "test"):
        assert texts(other.splits[name]) == texts(default.splits[name])
    assert other.train_prompts == default.train_prompts
    draws = [[conversation[-1]["content"] for _, conversation in trainer.next_prompts(8)]
             for trainer in (default, same, other)]
    assert draws[0] == draws[1] and draws[2] != draws[0]
    assert sorted(draws[2]) != sorted(draws[0])


def test_the_value_model_starts_at_the_normalised_reward(tiny_run, tmp_path):
    """At step 0, V at the last token of an episode = the plain classifier's logit + the stored bias."""
    import json

    from transformers import AutoModelForSequenceClassification

    run_dir, _ = tiny_run
    trainer = _ppo_trainer(run_dir, tmp_path)
    batch = trainer.engine.rollout(*zip(*trainer.next_prompts(8)))
    ids, mask = batch.full_sequence()
    bias = json.loads((run_dir / "reward" / "config.json").read_text())["rlhf_reward_bias"]
    assert abs(bias) > 1e-3
    plain = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward").eval().to(ids.device)
    for row in range(8):
        real = ids[row][mask[row].bool()][None]
        with torch.no_grad():
            value = trainer.value(real, torch.ones_like(real))[0, -1]
            expected = plain(input_ids=real).logits[0, 0] + bias
        assert value.item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_a_zeroed_value_head_starts_at_one_constant_and_leaves_the_reward_model(tiny_run, tmp_path, lora):
    """value_head=zero: V is the stored normalisation bias at every position of every episode, while
    the reward model still scores as the plain classifier plus that bias, also where LoRA makes the
    value model and the reward model one copy of the weights."""
    import json

    from transformers import AutoModelForSequenceClassification

    run_dir, _ = tiny_run
    trainer = _ppo_trainer(run_dir, tmp_path, "value_head=zero", *(["lora.r=4"] if lora else []))
    batch = trainer.engine.rollout(*zip(*trainer.next_prompts(8)))
    ids, mask = batch.full_sequence()
    bias = json.loads((run_dir / "reward" / "config.json").read_text())["rlhf_reward_bias"]
    plain = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward").eval().to(ids.device)
    real = ids[0][mask[0].bool()][None]
    with torch.no_grad():
        values = trainer.value(ids, mask)[mask.bool()]
        expected = plain(input_ids=real).logits[0, 0] + bias
        score = trainer.reward_model(real, torch.ones_like(real))[0, -1]
    torch.testing.assert_close(values, torch.full_like(values, bias))
    assert abs(expected.item() - bias) > 1e-3  # the reward model's own head is not zero …
    assert score.item() == pytest.approx(expected.item(), abs=1e-4)  # … and it still scores with it


@pytest.mark.parametrize("no_eos_score", [-1.0, None])
def test_a_response_that_never_ends_scores_no_eos_score(tiny_run, tmp_path, no_eos_score):
    run_dir, _ = tiny_run
    extra = [] if no_eos_score == -1.0 else ["no_eos_score=null"]  # -1 is the default
    trainer = _ppo_trainer(run_dir, tmp_path, "max_new_tokens=3", *extra)
    assert trainer.config.no_eos_score == no_eos_score
    batch = trainer.engine.rollout(*zip(*trainer.next_prompts(8)))
    assert not batch.ended_with_eos.all()  # 3 tokens: the synthetic responses are longer
    unended = batch.scores[~batch.ended_with_eos]
    if no_eos_score is None:
        assert (unended != -1.0).all()  # the reward model's own scores
    else:
        assert (unended == -1.0).all()


@pytest.mark.parametrize("engine", ["static", "eager"])
def test_bf16_rollout_ratio_is_one_at_the_first_minibatch(tiny_run, tmp_path, engine):
    """bf16 mixed precision, two minibatches: the rollout samples from a bf16 copy of the policy
    (static engine) or the policy itself (eager); either way the old log-probs come from the scoring
    pass, so before the first optimizer step the ratio is exactly 1 and the policy == reference."""
    run_dir, _ = tiny_run
    config = load_config("ppo", [], [
        f"model={run_dir / 'sft'}", f"reward_model={run_dir / 'reward'}", f"prompts=[{run_dir / 'data/prompts.jsonl'}]",
        "ptx_coef=0", "rollout_batch_size=8", "num_minibatches=2", "max_new_tokens=16", "max_prompt_length=64",
        "max_length=128", "mixed_precision=bf16", f"rollout_engine={engine}", f"output_dir={tmp_path / 'ppo'}"])
    trainer = PPOTrainer(config)
    first: list[dict] = []
    update = trainer.update
    trainer.update = lambda mb, forward: (stats := update(mb, forward), first.append(stats))[0]
    metrics = trainer.step(trainer.next_prompts(8))
    assert len(first) == 2 and first[0]["ppo/policy/approxkl"] == 0.0 and first[0]["ppo/policy/clipfrac"] == 0.0
    assert metrics["objective/kl"] == 0.0
    if engine == "static":
        assert trainer.engine.decoders["policy"].copied  # sampled from the bf16 copy, not the policy


def test_ppo_gradient_checkpointing_changes_memory_not_the_update(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    results = []
    for checkpointing in (False, True):
        config = load_config("ppo", [], [
            f"model={run_dir / 'sft'}", f"reward_model={run_dir / 'reward'}",
            f"prompts=[{run_dir / 'data/prompts.jsonl'}]", "ptx_coef=0", "rollout_batch_size=8",
            "num_minibatches=2", "max_new_tokens=16", "max_prompt_length=64", "max_length=128",
            f"gradient_checkpointing={checkpointing}", f"output_dir={tmp_path / str(checkpointing)}"])
        trainer = PPOTrainer(config)
        results.append((trainer.step(trainer.next_prompts(8)), trainer.step(trainer.next_prompts(8))))
    for plain, recomputed in zip(*results):
        for name in ("ppo/loss/policy", "ppo/loss/value", "objective/kl", "ppo/policy/approxkl"):
            assert recomputed[name] == pytest.approx(plain[name], rel=1e-3, abs=1e-6), name


def test_scoring_in_the_update_forward_changes_nothing(tiny_run, tmp_path):
    """With one minibatch the update's forward supplies the old log-probs and values; the same
    steps with them scored in the rollout instead give the same numbers."""
    run_dir, _ = tiny_run
    results = []
    for score_in_update in (True, False):
        config = load_config("ppo", [], [
            f"model={run_dir / 'sft'}", f"reward_model={run_dir / 'reward'}",
            f"prompts=[{run_dir / 'data/prompts.jsonl'}]", f"pretraining={run_dir / 'data/pretraining.txt'}",
            "rollout_batch_size=8", "num_minibatches=1", "ppo_epochs=2", "max_new_tokens=16",
            "max_prompt_length=64", "max_length=128", "ptx_block_size=32", "ptx_batch_size=2",
            f"output_dir={tmp_path / str(score_in_update)}"])
        trainer = PPOTrainer(config)
        assert trainer.score_in_update
        trainer.score_in_update = score_in_update
        results.append((trainer.step(trainer.next_prompts(8)), trainer.step(trainer.next_prompts(8))))
    for reused, scored in zip(*results):
        for name in ("ppo/loss/policy", "ppo/loss/value", "ppo/loss/ptx", "objective/kl", "ppo/val/var_explained"):
            assert reused[name] == pytest.approx(scored[name], rel=1e-3, abs=1e-6), name


def test_rerun_skips_finished_stages(tiny_run):
    run_dir, summary = tiny_run
    lines_before = (run_dir / "metrics.jsonl").read_text()
    written = {path: path.stat().st_mtime_ns for path in run_dir.glob("*/model.safetensors")}
    written[run_dir / "eval.json"] = (run_dir / "eval.json").stat().st_mtime_ns
    again = run_pipeline(load_config("pipeline", [preset_config_path("tiny")]), run_dir)
    assert again["ppo"]["eval/score_policy"] == summary["ppo"]["eval/score_policy"]
    assert (run_dir / "metrics.jsonl").read_text() == lines_before  # nothing trained again
    assert {path: path.stat().st_mtime_ns for path in written} == written  # nothing rewritten


def test_interrupted_stage_never_looks_finished(tmp_path):
    output = tmp_path / "stage"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(SFTConfig(output_dir=str(output)), "sft", Accelerator(cpu=True)) as staging:
            (staging / "model.safetensors").write_text("half")
            raise RuntimeError("boom")
    assert not output.exists() and not is_finished(output)
    assert not output.with_name("stage.incomplete").exists()  # the failure removed its staging folder


def test_generate_cli_samples_from_a_stage(tiny_run):
    run_dir, _ = tiny_run
    result = subprocess.run([sys.executable, "-m", "rlhf.cli", "generate", "--model", str(run_dir / "ppo"),
                             "--prompt", "Say words about snow 3.", "--max-new-tokens", "40"],
                            capture_output=True, text=True, check=True)
    response = result.stdout.split("### response\n")[1].strip()
    assert response == generate(str(run_dir / "ppo"), ["Say words about snow 3."], 40, 0.7, seed=0)[0]
    assert response


def test_two_processes_train_sft(tiny_run, tmp_path, tiny_path):
    run_dir, _ = tiny_run
    output = tmp_path / "sft2"
    env = cpu_env()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "-m", "rlhf.cli", "sft", f"model={tiny_path}", f"data=[{run_dir / 'data/demonstrations.jsonl'}]",
         f"output_dir={output}", "epochs=1", "max_steps=4", "batch_size=4", "max_length=128",
         "mixed_precision=fp32", f"metrics_file={tmp_path / 'm.jsonl'}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((output / "rlhf.json").read_text())
    assert meta["world_size"] == 2
    assert meta["metrics"]["steps"] == 4
    rates = [row["sft/lr"] for row in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())
             if "sft/lr" in row]
    # the schedule counts optimizer steps whatever the world size: it ends at its floor, 0.1 × 2e-5
    assert len(rates) == 4 and rates[-1] == pytest.approx(2e-6) and rates == sorted(rates, reverse=True)
    AutoModelForCausalLM.from_pretrained(output)


def test_stage_folders_from_before_the_marker_are_recognised_as_their_own(tiny_run, tmp_path):
    """What a real stage writes, without its marker (as older versions left it), is that stage's own."""
    import shutil

    from rlhf.checkpoint import earlier_stage_output
    from rlhf.outputs import MARKER, ownership

    run_dir, _ = tiny_run
    for stage, folder in (("sft", "sft"), ("reward", "reward"), ("ppo", "ppo")):
        old = tmp_path / folder
        shutil.copytree(run_dir / folder, old)
        (old / MARKER).unlink()
        assert ownership(old, stage, earlier_stage_output(stage)) == (True, []), sorted(p.name for p in old.iterdir())
        assert not ownership(old, "sft" if stage != "sft" else "reward", earlier_stage_output("x"))[0]


def test_rloo_step_is_reinforce_with_the_leave_one_out_baseline_and_no_value_model(tiny_run, tmp_path):
    """advantage=rloo in the PPO trainer: k samples of each prompt in a row, no value model, and at the
    first (one-minibatch) update the ratio is 1, so the clipped loss is −Σ_i A_i·n_i / Σ_i n_i with
    A_i = R_i − mean of its k − 1 siblings' R, R = score − β·Σ_t (log π − log π_ref) (computed here from
    the rollout batch, not through the trainer's functions)."""
    run_dir, _ = tiny_run
    trainer = _ppo_trainer(run_dir, tmp_path, "advantage=rloo", "rloo_k=4", "kl_coef=0.5")
    assert trainer.value is None and set(trainer.trained_models()) == {"policy"}
    prompts = trainer.next_prompts(8)
    assert [p[0] for p in prompts[:4]] == [prompts[0][0]] * 4 and prompts[4][0] == prompts[7][0] != prompts[0][0]
    seen = {}
    rollout, update = trainer.engine.rollout, trainer.update
    trainer.engine.rollout = lambda *a, **k: seen.setdefault("batch", rollout(*a, **k))
    trainer.update = lambda mb, forward: seen.setdefault("stats", update(mb, forward))
    first = trainer.step(prompts)
    batch = seen["batch"]
    lengths = batch.response_mask.sum(1)
    kl = ((batch.logprobs - batch.ref_logprobs) * batch.response_mask).sum(1)
    # policy == reference before any update: the policy's log-probs come from the training forward, the
    # reference's from a no-grad pass; on a GPU the two take other kernels (measured up to 4e-6 on an H200)
    assert kl.abs().max() < 1e-5
    total = batch.scores.double() - 0.5 * kl.double()
    expected = 0.0
    for i in range(8):
        group = [j for j in range(8) if j // 4 == i // 4 and j != i]
        expected -= (total[i] - total[group].mean()) * lengths[i]
    assert seen["stats"]["ppo/loss/policy"] == pytest.approx((expected / lengths.sum()).item(), rel=1e-4, abs=1e-6)
    assert first["ppo/policy/approxkl"] == 0.0
    assert not {"ppo/loss/value", "ppo/val/var_explained", "ppo/val/clipfrac"} & set(first)
    second = trainer.step(trainer.next_prompts(8))
    assert second["objective/kl"] != 0.0


def test_regress_out_length_takes_the_batch_slope_out_of_the_scores_the_update_sees(tiny_run, tmp_path):
    """regress_out_length with RLOO: an update's loss (ratio 1 at a step's one minibatch) is the
    leave-one-out loss of scores from which a least-squares line in response length, fitted
    (numpy.polyfit) over the episodes that ended (the others hold the fixed no-EOS score), was taken
    out; the logged slope is that line's."""
    run_dir, _ = tiny_run
    trainer = _ppo_trainer(run_dir, tmp_path, "advantage=rloo", "rloo_k=2", "kl_coef=0", "regress_out_length=true")
    seen = {}
    rollout, update = trainer.engine.rollout, trainer.update
    trainer.engine.rollout = lambda *a, **k: seen.setdefault("batch", rollout(*a, **k))
    trainer.update = lambda mb, forward: seen.setdefault("stats", update(mb, forward))
    for _ in range(4):  # the draws decide how many responses end: step until a line can be fitted
        seen.clear()
        metrics = trainer.step(trainer.next_prompts(8))
        batch = seen["batch"]
        lengths, scores = batch.response_mask.sum(1).double().numpy(), batch.scores.double().numpy()
        ended = batch.ended_with_eos.numpy()
        if ended.sum() >= 3 and len(set(lengths[ended])) >= 2:
            break
    assert ended.sum() >= 3 and len(set(lengths[ended])) >= 2, (lengths, ended)  # a line to fit
    slope, _ = np.polyfit(lengths[ended], scores[ended], 1)
    assert metrics["objective/length_slope"] == pytest.approx(slope, rel=1e-6, abs=1e-9)
    assert abs(slope) > 1e-3  # the tiny reward model does prefer a length
    regressed = np.where(ended, scores - slope * (lengths - lengths[ended].mean()), scores)
    advantage = (regressed.reshape(-1, 2) - regressed.reshape(-1, 2)[:, ::-1]).reshape(-1)  # k = 2: A = R − R_sibling
    expected = -(advantage * lengths).sum() / lengths.sum()
    assert seen["stats"]["ppo/loss/policy"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    raw = (scores.reshape(-1, 2) - scores.reshape(-1, 2)[:, ::-1]).reshape(-1)
    assert expected != pytest.approx(-(raw * lengths).sum() / lengths.sum(), rel=1e-3)  # the regression changed it


def test_rloo_raises_the_score(tiny_run):
    """RLOO on the tiny task (the preset's PPO settings, 4 samples per prompt, no critic, no ptx) beats SFT."""
    run_dir, summary = tiny_run
    rloo = summary["rloo"]
    assert rloo["eval/score_policy"] > rloo["eval/score_sft"] + 1.0
    assert rloo["eval/win_rate_vs_sft"] >= 0.7
    meta = json.loads((run_dir / "rloo" / "rlhf.json").read_text())
    assert meta["config"]["advantage"] == "rloo" and meta["config"]["ptx_coef"] == 0.0
    assert AutoModelForCausalLM.from_pretrained(run_dir / "rloo") is not None


def test_overoptimization_judges_every_method_with_a_gold_model_and_fits_the_curves(tiny_run, capsys):
    """Last in this file (it adds gold-reward/ to the run). A gold reward model is trained (every
    training comparison, twice the epochs, never optimised against); SFT, PPO's 4 snapshots and final
    policy, RLOO, DPO and best-of-n are judged on held-out prompts; the table and the curve land in
    report.html."""
    from rlhf.bestofn import best_of_n_kl
    from rlhf.cli import main

    run_dir, _ = tiny_run
    assert sorted(p.name for p in (run_dir / "ppo" / "snapshots").iterdir()) == [
        "step-000004", "step-000008", "step-000012", "step-000016"]
    AutoModelForCausalLM.from_pretrained(run_dir / "ppo" / "snapshots" / "step-000008")  # plain HF folders
    assert main(["eval", "overoptimization", str(run_dir), "--gold", str(run_dir / "reward")]) == 2
    assert "a policy of this run was optimised against it" in capsys.readouterr().err
    assert main(["eval", "overoptimization", str(run_dir), "--prompts", "12", "--n", "1", "2", "4",
                 "--max-new-tokens", "24"]) == 0
    printed = capsys.readouterr().out
    assert "PPO: gold gain = d(α − β log d): α = " in printed and "best-of-n: gold gain = d(α − β d)" in printed
    gold = json.loads((run_dir / "gold-reward" / "rlhf.json").read_text())
    proxy = json.loads((run_dir / "reward" / "rlhf.json").read_text())
    assert gold["config"]["epochs"] == 2 * proxy["config"]["epochs"] and gold["config"]["max_examples"] is None
    for stage in ("ppo", "rloo"):  # the gold model was never a reward to optimise
        config = json.loads((run_dir / stage / "rlhf.json").read_text())["config"]
        assert config["reward_model"] == str(run_dir / "reward")
    result = json.loads((run_dir / "overoptimization.json").read_text())
    labels = [p["label"] for p in result["points"]]
    assert labels == ["sft", "ppo step 4", "ppo step 8", "ppo step 12", "ppo step 16", "ppo", "rloo", "dpo",
                      "best-of-1", "best-of-2", "best-of-4"]
    points = {p["label"]: p for p in result["points"]}
    assert points["sft"]["kl"] == 0.0 and points["sft"]["win_rate_vs_sft"]["win_rate"] == 0.5
    assert points["best-of-4"]["kl"] == pytest.approx(best_of_n_kl(4))
    assert points["ppo"]["kl"] > 0 and points["ppo"]["proxy"] > points["sft"]["proxy"]
    assert points["ppo step 16"]["gold"] == pytest.approx(points["ppo"]["gold"])  # the last snapshot is the policy
    assert points["best-of-4"]["proxy"] >= points["best-of-1"]["proxy"]  # the proxy picks its best of more
    assert {"alpha", "beta", "peak_kl"} <= set(result["fits"]["rl"]) and "alpha" in result["fits"]["best_of_n"]
    assert [row["method"] for row in result["table"]] == ["SFT", "PPO-ptx", "RLOO", "DPO", "best-of-1", "best-of-2",
                                                          "best-of-4"]
    html = (run_dir / "report.html").read_text()
    assert "Methods side by side" in html and "Reward over-optimisation" in html
    assert "alt='gold and proxy score against sqrt KL' src='data:image/png;base64," in html


def test_the_judge_trains_on_no_comparison_the_proxy_trained_on(tiny_run):
    run_dir, summary = tiny_run
    proxy = json.loads((run_dir / "reward" / "splits.json").read_text())
    judge = json.loads((run_dir / "judge" / "splits.json").read_text())
    assert len(proxy["trained"]) == 320 and len(judge["trained"]) > 100
    assert not set(proxy["trained"]) & set(judge["trained"])
    assert set(judge["trained"]) == set(proxy["train"]) - set(proxy["trained"])  # all the rest, no cap reached
    assert set(judge["trained"]) <= set(proxy["train"])  # the same split: test pairs stay held out from both
    assert judge["test"] == proxy["test"]
    meta = json.loads((run_dir / "judge" / "rlhf.json").read_text())["config"]
    assert meta["model"] == "tiny" and meta["disjoint_from"] == str(run_dir / "reward")  # the base model, not SFT
    assert summary["judge"]["valid/accuracy"] >= 0.8  # a judge that tells the synthetic preference
    results = json.loads((run_dir / "eval.json").read_text())
    judged = results["judged"]
    assert judged["judge"] == "judge" and judged["prompts"] > 64  # the fixed 64 and held-out PPO prompts
    ppo = judged["vs_sft"]["ppo"]
    assert {"all", "harmful", "ordinary", "held_out"} <= set(ppo)
    assert ppo["all"]["low"] <= ppo["all"]["win_rate"] <= ppo["all"]["high"]
    equal = ppo["length_controlled"]
    assert equal["n"] == ppo["all"]["n"] and equal["low"] <= equal["win_rate"] <= equal["high"]
    assert ppo["held_out"]["win_rate"] > 0.5  # PPO's gain on its own task shows under the independent judge
    report = (run_dir / "report.md").read_text()
    assert report.startswith(f"# RLHF run report: `{run_dir}`\n\n## Result on held-out prompts")
    assert "judge `judge`" in report and "never saw" in report
    assert all("reference_logprob" in m for m in results["policies"].values())
    from rlhf.models import load_tokenizer  # the mean length is of the stored samples, in the policy's tokens

    tokenizer = load_tokenizer(str(run_dir / "ppo"))
    samples = list(results["samples"]["ppo"].values())
    assert len(samples) == 64 and results["policies"]["ppo"]["response_tokens"] == pytest.approx(
        sum(len(tokenizer.encode(s, add_special_tokens=False)) for s in samples) / 64)
    preference = results["refusal_preference"]
    assert set(preference) == {"reward", "judge"}
    assert all(0 <= p[kind] <= p["of"] == 32 for p in preference.values() for kind in ("ordinary", "harmful"))
    assert "A canned refusal" in report
    # every judged response in samples.jsonl, with the scores the win rate was computed from
    lines = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == judged["prompts"]  # the tiny preset has no benign requests
    assert [line["category"] for line in lines[:64]] == ["harmful"] * 32 + ["ordinary"] * 32
    assert all(line["category"] == "held_out" and set(line["responses"]) == {"sft", "ppo"} for line in lines[64:])
    assert all(set(line["responses"]) == {"base", "sft", "ppo"} == set(line["reward"]) for line in lines[:64])
    for name in ("base", "ppo"):
        kept = {line["prompt"][0]["content"]: line["responses"][name] for line in lines[:64]}
        assert kept == results["samples"][name]
    from rlhf.eval.winrate import win_rate

    judged_again = win_rate([line["judge"]["ppo"] for line in lines], [line["judge"]["sft"] for line in lines])
    assert judged_again["win_rate"] == pytest.approx(ppo["all"]["win_rate"], abs=0.02)  # scores kept to 4 places
    page = (run_dir / "report.html").read_text(encoding="utf-8")  # every line of it in the page, too
    assert page.count("<tr><td>held_out</td>") == len(lines) - 64 and page.count("<tr><td>ordinary</td>") == 32


def test_ppo_train_layers_moves_only_the_top_blocks_of_policy_and_value(tiny_run, tmp_path):
    from rlhf.models import decoder_blocks

    run_dir, _ = tiny_run
    trainer = _ppo_trainer(run_dir, tmp_path, "train_layers=1")
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    value = trainer.accelerator.unwrap_model(trainer.value).hf
    before = {name: {k: v.detach().clone() for k, v in model.state_dict().items()}
              for name, model in (("policy", policy), ("value", value))}
    trainer.step(trainer.next_prompts(8))
    for name, model in (("policy", policy), ("value", value)):
        blocks = decoder_blocks(model)
        top = {id(p) for p in blocks[-1].parameters()}
        for key, param in model.named_parameters():
            moved = not torch.equal(param.detach(), before[name][key])
            if id(param) in top:
                assert moved, f"{name} {key} did not train"
            elif any(param is p for block in list(blocks)[:-1] for p in block.parameters()) or "embed" in key:
                assert not moved, f"{name} {key} is below the trained blocks and moved"


def test_the_evaluation_loads_each_reward_model_once_and_measures_as_before(tiny_run, tmp_path, monkeypatch):
    """Three policies, two reward models: the proxy (its test accuracy and its scores of every policy's
    samples) and the judge (the win rates) are each loaded once, not once per use or per policy; the
    measures are those the pipeline's own evaluation wrote."""
    import shutil

    import rlhf.eval.run as evaluation

    run_dir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval.json", "report.*"))
    loaded = []
    real = evaluation.load_scalar_model
    monkeypatch.setattr(evaluation, "load_scalar_model", lambda path, *a, **k: loaded.append(Path(path).name)
                        or real(path, *a, **k))
    from rlhf.eval.refusal import CANNED_REFUSAL, ORDINARY_PROMPTS

    questions = tmp_path / "questions.csv"  # benign requests too: measured and sampled after the fixed ones
    questions.write_text("Question\n" + "".join(f'"{p}?"\n' for p in ORDINARY_PROMPTS[:8]))
    config = load_config("pipeline", [preset_config_path("tiny")], [
        f"eval.benign_prompts={questions}", "eval.benign_prompt_field=Question"])
    again = evaluation.evaluate_run(copy, config, data_paths(config, copy, write=False))
    assert sorted(loaded) == ["judge", "reward"]  # the proxy: test accuracy and the policies' scores
    first = json.loads((run_dir / "eval.json").read_text())
    assert set(again["policies"]) == {"base", "sft", "ppo"}
    assert again["reward"] == pytest.approx(first["reward"])
    for name, measures in first["policies"].items():  # the benign requests change none of the other measures
        assert {k: again["policies"][name][k] for k in measures} == pytest.approx(measures, rel=1e-4), name
        assert {"benign_answered", "benign_refusal_opening"} <= set(again["policies"][name])
        assert again["samples"][name] == first["samples"][name]
    assert again["judged"]["vs_sft"]["ppo"]["all"] == pytest.approx(first["judged"]["vs_sft"]["ppo"]["all"])
    # the refusal preference on the benign requests: against the base model's own benign samples
    benign = evaluation.benign_prompts(config)
    _, responses, _ = evaluation.measure_policy(config.model, config, benign=benign)
    answers = responses[64:]
    assert len(answers) == 8
    for name in ("reward", "judge"):
        scorer = evaluation.RewardScorer(copy / name)
        refused, answered = scorer(benign, [CANNED_REFUSAL] * 8), scorer(benign, answers)
        preference = again["refusal_preference"][name]
        assert preference["benign_of"] == 8 and preference["benign"] == sum(r > a for r, a in zip(refused, answered))
        assert {k: preference[k] for k in ("ordinary", "harmful", "of")} == first["refusal_preference"][name]
    lines = [json.loads(line) for line in (copy / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["category"] for line in lines[-8:]] == ["benign"] * 8  # each policy's, sampled after the rest
    assert [line["prompt"] for line in lines[-8:]] == benign
    assert [line["responses"]["base"] for line in lines[-8:]] == answers
    assert all(set(line["responses"]) == {"base", "sft", "ppo"} and not line["judge"] for line in lines[-8:])


def test_without_a_judge_the_proxy_judges_and_its_scores_stay_under_its_own_name(tiny_run, tmp_path):
    """A run without a judge: the proxy reward model stands in (eval.json names it), and samples.jsonl
    keeps its scores under ``reward`` -- the held-out dialogues' too -- with no ``judge`` key that would
    pass the proxy off as independent. The win rate recomputed from the file is the reported one, and
    the fixed prompts' scores are those the table's mean proxy scores were computed from."""
    import shutil

    import rlhf.eval.run as evaluation
    from rlhf.eval.winrate import win_rate

    run_dir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval.json", "report.*", "samples.jsonl", "judge"))
    config = load_config("pipeline", [preset_config_path("tiny")])
    results = evaluation.evaluate_run(copy, config, data_paths(config, copy, write=False))
    assert results["judged"]["judge"] == "reward" and set(results["refusal_preference"]) == {"reward"}
    lines = [json.loads(line) for line in (copy / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == results["judged"]["prompts"] > 64 and not any("judge" in line for line in lines)
    assert all(set(line["reward"]) == {"base", "sft", "ppo"} for line in lines[:64])
    assert all(line["category"] == "held_out" and set(line["reward"]) == {"sft", "ppo"} for line in lines[64:])
    again = win_rate([line["reward"]["ppo"] for line in lines], [line["reward"]["sft"] for line in lines])
    assert again["win_rate"] == pytest.approx(results["judged"]["vs_sft"]["ppo"]["all"]["win_rate"], abs=0.02)
    for name in ("base", "ppo"):
        harmful = [line["reward"][name] for line in lines[:32]]
        assert sum(harmful) / 32 == pytest.approx(results["policies"][name]["rm_score_harmful"], abs=1e-3)


def test_an_evaluation_of_several_draws_averages_them_and_keeps_draw_0_as_one_draw_samples_it(tiny_run, tmp_path):
    """``eval.samples=2``: every policy samples each fixed prompt and judged dialogue twice. Draw 0 is the
    one-draw evaluation's (the same seed), draw 1 another; samples.jsonl has a line per prompt and draw,
    and from its lines alone the refusal rates (mean over draws), the proxy's mean scores and the
    judge's win rate (each prompt's mean over its draws) come out as reported. Another ``eval.seed``
    draws other responses from the same weights."""
    import shutil

    import rlhf.eval.run as evaluation
    from rlhf.eval.refusal import refusal_rate
    from rlhf.eval.winrate import win_rate

    run_dir, _ = tiny_run
    first = json.loads((run_dir / "eval.json").read_text())
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval.json", "report.*", "samples.jsonl"))
    config = load_config("pipeline", [preset_config_path("tiny")], ["eval.samples=2"])
    seeds = {}
    real = evaluation.generate

    def generate(path, prompts, *args, seed, **kwargs):
        seeds.setdefault(Path(path).name, []).append(seed)
        return real(path, prompts, *args, seed=seed, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "generate", generate)
        results = evaluation.evaluate_run(copy, config, data_paths(config, copy, write=False))
    assert seeds == {name: evaluation.draw_seeds(config.seed, 2) for name in ("ppo", "sft", Path(config.model).name)}
    assert "draws" not in first and results["draws"] == 2
    assert results["samples"] == first["samples"]  # draw 0: the one-draw responses
    judged = results["judged"]["prompts"]
    lines = [json.loads(line) for line in (copy / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["draw"] for line in lines] == [0] * judged + [1] * judged  # no benign requests in tiny
    draws = [lines[:judged], lines[judged:]]
    assert [line["prompt"] for line in draws[1]] == [line["prompt"] for line in draws[0]]
    assert any(a["responses"] != b["responses"] for a, b in zip(*draws))
    for name in ("base", "sft", "ppo"):
        refused = [refusal_rate([line["responses"][name] for line in draw[:32]]) for draw in draws]
        assert results["policies"][name]["harmful_refused"] == pytest.approx(sum(refused) / 2)
        proxied = [line["reward"][name] for draw in draws for line in draw[32:64]]
        assert sum(proxied) / 64 == pytest.approx(results["policies"][name]["rm_score_ordinary"], abs=1e-3)
    again = win_rate([[d[i]["judge"]["ppo"] for d in draws] for i in range(judged)],
                     [[d[i]["judge"]["sft"] for d in draws] for i in range(judged)])
    reported = results["judged"]["vs_sft"]["ppo"]["all"]
    assert reported["draws"] == 2 and reported["n"] == judged
    assert again["win_rate"] == pytest.approx(reported["win_rate"], abs=0.02)  # scores kept to 4 places
    assert "sampled 2 times" in (copy / "report.md").read_text()
    from rlhf.eval.html_report import write_html_report

    page = write_html_report(copy).read_text(encoding="utf-8")  # every draw's line a row of its own
    assert page.count("<small>draw 1</small>") == judged and "each sampled 2 times" in page
    reseeded = config.model_copy(update={"eval": config.eval.model_copy(update={"seed": 12345, "samples": 1})})
    _, responses, _ = evaluation.measure_policy(str(copy / "ppo"), reseeded)
    assert responses != [first["samples"]["ppo"][p] for p in list(first["samples"]["ppo"])]


def test_a_reward_scorer_forwards_each_prompt_once_and_gives_the_scores_of_each_pair_alone(tiny_run):
    """The evaluation scores the base model's answers twice (the table, the refusal count): the second
    time they come from the scorer's memory. New pairs are forwarded one row per prompt, all of its
    responses after it; each score equals what a fresh scorer computes for that pair alone."""
    from rlhf.eval.run import RewardScorer

    run_dir, _ = tiny_run
    scorer = RewardScorer(run_dir / "reward")
    rows = []
    scorer.model.register_forward_hook(lambda module, args, output: rows.append(output.shape[0]))
    prompts = ["Name a colour.", "Name a fruit.", "Name a colour.", "Name a colour."]
    responses = ["Blue.", "A pear.", "Blue.", "Red, or a very dark green."]
    first = scorer(prompts, responses)
    assert rows == [2] and first[0] == first[2] and first[0] != first[3]  # two prompts: two rows, one batch
    again = scorer(["Name a fruit.", "Name a tool."], ["A pear.", "A hammer."])
    assert rows == [2, 1] and again[0] == first[1]
    for prompt, response, score in zip(prompts + ["Name a tool."], responses + ["A hammer."], first + again[1:]):
        assert RewardScorer(run_dir / "reward")([prompt], [response]) == pytest.approx([score], abs=1e-5)
    many = [f"Name {n} colours." for n in range(5)]  # in order of length, at least batch_size responses a batch
    scorer(many * 2, ["Blue."] * 5 + ["Red."] * 5, batch_size=4)
    assert rows[2:] == [2, 2, 1]
    # a model whose sliding window is shorter than a row: one row per response, the same scores
    scorer.model.hf.config.sliding_window = 8
    scorer._scores.clear()
    del rows[:]
    assert scorer(prompts, responses) == pytest.approx(first, abs=1e-5) and rows == [3]


def test_over_refusal_on_benign_requests_is_measured_from_a_file(tiny_run, tmp_path):
    """``eval.benign_prompts`` (a CSV read through its Question column, as TruthfulQA ships) gives each
    policy the share answered and the exact opening probability; on the 32 ordinary prompts read that
    way the opening probability is the ordinary prompts' own. A seeded sample keeps file order."""
    from rlhf.eval.refusal import ORDINARY_PROMPTS
    from rlhf.eval.run import benign_prompts, measure_policy

    run_dir, _ = tiny_run
    questions = tmp_path / "questions.csv"
    rows = "".join(f'x,"{p}"\n' for p in ORDINARY_PROMPTS)
    questions.write_text("Type,Question\n" + rows)
    config = load_config("pipeline", [preset_config_path("tiny")], [
        f"eval.benign_prompts={questions}", "eval.benign_prompt_field=Question", "eval.max_new_tokens=8"])
    benign = benign_prompts(config)
    assert [turns[0]["content"] for turns in benign] == ORDINARY_PROMPTS  # 32 < benign_limit: all, in order
    sample = benign_prompts(config.model_copy(update={"eval": config.eval.model_copy(update={"benign_limit": 5})}))
    picked = [turns[0]["content"] for turns in sample]
    assert len(picked) == 5 and picked == [p for p in ORDINARY_PROMPTS if p in picked]
    metrics, responses, draws = measure_policy(str(run_dir / "ppo"), config, benign=benign)
    assert len(responses) == 64 + 32  # the fixed prompts', then the benign samples (REFUSAL_WINDOW tokens deep)
    assert draws == [responses[:64]]
    from rlhf.eval.refusal import refusal_rate

    assert metrics["benign_answered"] == 1 - refusal_rate(responses[64:])
    assert metrics["benign_refusal_opening"] == pytest.approx(metrics["ordinary_refusal_opening"], rel=1e-5)
    assert 0 < metrics["benign_refusal_opening"] < 1
    assert 0 <= metrics["benign_answered"] <= 1 and (metrics["benign_answered"] * 32).is_integer()
    greedy = config.model_copy(update={"eval": config.eval.model_copy(update={"temperature": 0.0, "samples": 2})})
    metrics, _, draws = measure_policy(str(run_dir / "ppo"), greedy, benign=benign)  # no greedy opening probability
    assert "benign_answered" in metrics and not any(key.endswith("_refusal_opening") for key in metrics)
    assert len(draws) == 1  # a greedy draw is every draw: eval.samples does not repeat it
