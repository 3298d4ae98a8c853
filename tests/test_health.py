"""Runs that do not die of NaN or collapse silently: the non-finite guard, PPO's health checks,
and metrics through accelerate's trackers (TensorBoard, read back)."""

import json

import pytest
import torch

from rlhf.config import HealthSettings, load_config
from rlhf.data.synthetic import write_synthetic_data
from rlhf.train.common import NonFiniteGuard, TrainingDiverged
from rlhf.train.health import HealthMonitor, repeated_ngram_fraction


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_data(tmp_path_factory.mktemp("data"), n_demos=96, n_comparisons=64, n_prompts=48)


def test_the_guard_skips_non_finite_updates_and_stops_after_max_bad_steps(tmp_path):
    guard = NonFiniteGuard(max_bad_steps=3)
    assert guard.check("sft", 1, loss=torch.tensor(1.0), gradient_norm=torch.tensor(2.0))
    assert not guard.check("sft", 2, loss=torch.tensor(float("nan")), gradient_norm=torch.tensor(2.0))
    assert guard.check("sft", 3, loss=torch.tensor(0.5), gradient_norm=torch.tensor(1.0))  # the spell is over
    assert not guard.check("sft", 4, loss=torch.tensor(0.5), gradient_norm=torch.tensor(float("inf")))
    assert not guard.check("sft", 5, loss=torch.tensor(0.5), gradient_norm=torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"^sft: step 6: gradient_norm not finite in 3 updates in a row "
                                               r"\(max_bad_steps\); the last good checkpoint is /x/step-00000004"):
        guard.check("sft", 6, loss=torch.tensor(0.5), gradient_norm=torch.tensor(float("nan")),
                    last_checkpoint="/x/step-00000004")
    assert guard.skipped == 4


def test_an_injected_nan_is_skipped_and_the_weights_stay_finite(tiny_path, data, tmp_path, poisoned_sft_loss):
    """One SFT batch's loss is made NaN: that update is skipped (counted), the others train."""
    from safetensors.torch import load_file

    import rlhf.train.sft as sft

    poisoned_sft_loss["nan_at"] = {3}
    config = load_config("sft", [], [f"model={tiny_path}", f"data=[{data['demonstrations']}]", "max_steps=6",
                                     "batch_size=8", "max_length=128", "valid_fraction=0",
                                     f"metrics_file={tmp_path / 'm.jsonl'}", f"output_dir={tmp_path / 'sft'}"])
    sft.train_sft(config)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    skipped = [r["train/skipped_steps"] for r in rows if "sft/loss" in r]
    assert skipped == [0, 0, 1, 1, 1, 1]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "sft" / "model.safetensors").values())


def test_a_diverging_stage_stops_with_one_line_naming_step_and_tensor(tiny_path, data, tmp_path):
    from rlhf.cli import main

    code = main(["sft", f"model={tiny_path}", f"data=[{data['demonstrations']}]", "max_steps=6", "batch_size=8",
                 "max_length=128", "learning_rate=1e30", "max_bad_steps=2", "checkpoint_every=1",
                 f"output_dir={tmp_path / 'sft'}"])
    assert code == 2
    assert not (tmp_path / "sft").exists()


def test_repeated_ngrams_are_measured_per_response():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0], [9, 9, 9, 9, 9, 9, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8])
    fractions = repeated_ngram_fraction(ids, mask)
    assert fractions[0] == 0.0  # 4 distinct 4-grams
    assert fractions[1] == pytest.approx(1 - 1 / 5)  # 5 four-grams, one distinct


def test_health_alerts_fire_once_per_spell_and_name_the_threshold(caplog):
    monitor = HealthMonitor(HealthSettings(window=2))
    healthy = {"objective/kl": 0.5, "ppo/policy/entropy": 2.0, "rollout/repeated_ngrams": 0.1,
               "rollout/response_length": 20.0, "rollout/eos_fraction": 0.9}
    assert monitor.check(1, healthy) == [] and monitor.check(2, healthy) == []
    collapsed = {"objective/kl": 40.0, "ppo/policy/entropy": 0.01, "rollout/repeated_ngrams": 0.8,
                 "rollout/response_length": 64.0, "rollout/eos_fraction": 0.1}
    alerts = monitor.check(3, collapsed)
    assert len(alerts) == 6 and "max_kl 20.0" in alerts[0]
    assert any("min_entropy" in a for a in alerts) and any("max_repeated_ngrams" in a for a in alerts)
    assert any("drifted from 20.0" in a for a in alerts) and any("90%" in a for a in alerts)
    warnings = len([r for r in caplog.records if "ppo health" in r.message])
    monitor.check(4, collapsed)
    assert len([r for r in caplog.records if "ppo health" in r.message]) == warnings  # logged once


def test_a_huge_learning_rate_collapses_ppo_and_the_report_says_so(tiny_path, data, tmp_path):
    """The tiny preset with PPO at lr 0.05: the policy collapses; the log warns and report.html's
    Health panel lists the alerts."""
    from rlhf.eval.html_report import build_html
    from rlhf.train.ppo import train_ppo
    from rlhf.train.reward import train_reward

    train_reward(load_config("reward", [], [f"model={tiny_path}", f"data=[{data['comparisons']}]", "max_steps=2",
                                            "batch_size=8", "max_length=128", f"output_dir={tmp_path / 'rm'}"]))
    run_dir = tmp_path / "run"
    config = load_config("ppo", [], [
        f"model={tiny_path}", f"reward_model={tmp_path / 'rm'}", f"prompts=[{data['prompts']}]", "ptx_coef=0",
        "rollout_batch_size=8", "total_episodes=64", "max_new_tokens=24", "max_prompt_length=64", "max_length=128",
        "learning_rate=0.05", "eval_prompts=4", f"metrics_file={run_dir / 'metrics.jsonl'}",
        f"output_dir={run_dir / 'ppo'}"])
    train_ppo(config)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    alerts = [a for r in rows for a in r.get("health/alerts", [])]
    assert alerts, [(r.get("objective/kl"), r.get("ppo/policy/entropy"), r.get("rollout/repeated_ngrams"))
                    for r in rows]
    html = build_html(run_dir)
    assert "<h2>Health</h2>" in html and alerts[0].split(" ")[0] in html


def test_metrics_reach_tensorboard(tiny_path, data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlhf.train.sft import train_sft

    config = load_config("sft", [], [f"model={tiny_path}", f"data=[{data['demonstrations']}]", "max_steps=3",
                                     "batch_size=8", "max_length=128", "log_with=[tensorboard]",
                                     f"tracking_dir={tmp_path / 'tb'}", f"output_dir={tmp_path / 'sft'}"])
    train_sft(config)
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("sft/loss")] == [1, 2, 3]
