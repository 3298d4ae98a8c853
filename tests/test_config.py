import pytest

from rlhf.cli import main
from rlhf.config import ConfigError, PPOConfig, load_config, parse_overrides, preset_config_path


def test_paper_defaults():
    ppo = PPOConfig()
    assert (ppo.kl_coef, ppo.ptx_coef, ppo.clip_range, ppo.gamma, ppo.lam, ppo.value_coef) == (
        0.02, 27.8, 0.2, 1.0, 0.95, 0.1)
    sft = load_config("sft")
    assert (sft.epochs, sft.dropout, sft.min_lr_ratio) == (16, 0.2, 0.1)
    assert load_config("reward").learning_rate == 9e-6


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model: tiny\nppo:\n  kl_coef: 0.05\n  total_episodes: 64\n")
    config = load_config("pipeline", [path], ["ppo.kl_coef=0.1", "sft.data=[a.jsonl, b.jsonl]"])
    assert config.ppo.kl_coef == 0.1 and config.ppo.total_episodes == 64
    assert config.sft.data == ["a.jsonl", "b.jsonl"]


def test_wrong_field_is_reported_by_name():
    with pytest.raises(ConfigError, match=r"ppo\.kl_coeff: Extra inputs are not permitted"):
        load_config("pipeline", [], ["ppo.kl_coeff=0.1"])
    with pytest.raises(ConfigError, match=r"learning_rate: Input should be a valid number.*'fast'"):
        load_config("sft", [], ["learning_rate=fast"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["epochs"])


def test_impossible_ppo_combinations_are_rejected():
    with pytest.raises(ConfigError, match="divisible by num_minibatches"):
        load_config("ppo", [], ["rollout_batch_size=10", "num_minibatches=3"])
    with pytest.raises(ConfigError, match="at least 2 episodes"):
        load_config("ppo", [], ["rollout_batch_size=4", "num_minibatches=4"])


def test_prompt_weights_need_one_positive_weight_per_prompt_file(tmp_path):
    with pytest.raises(ConfigError, match=r"prompt_weights has 1 weights for 2 prompt files"):
        load_config("ppo", [], ["prompts=[a.jsonl, b.jsonl]", "prompt_weights=[1]"])
    with pytest.raises(ConfigError, match=r"prompt_weights\.0: Input should be greater than 0"):
        load_config("ppo", [], ["prompts=[a.jsonl, b.jsonl]", "prompt_weights=[0, 1]"])
    # the pipeline hands data.prompt_weights to the PPO stage, checked against data.prompts
    from rlhf.pipeline import data_paths, stage_configs

    config = load_config("pipeline", [], ["data.demonstrations=[d.jsonl]", "data.comparisons=[c.jsonl]",
                                          "data.prompts=[a.jsonl, b.jsonl]", "data.prompt_weights=[0.3, 0.7]"])
    stages = stage_configs(config, tmp_path, data_paths(config, tmp_path, write=False))
    assert stages["ppo"].prompts == ["a.jsonl", "b.jsonl"] and stages["ppo"].prompt_weights == [0.3, 0.7]
    config = load_config("pipeline", [], ["data.demonstrations=[d.jsonl]", "data.comparisons=[c.jsonl]",
                                          "data.prompt_weights=[0.3, 0.7]"])
    with pytest.raises(ConfigError, match="pipeline ppo.*prompt_weights has 2 weights for 1 prompt files"):
        stage_configs(config, tmp_path, data_paths(config, tmp_path, write=False))


def test_presets_are_packaged_and_valid():
    config = load_config("pipeline", [preset_config_path("tiny")])
    assert config.data.synthetic and config.model == "tiny"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset_config_path("nope")


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    code = main(["sft", "epochz=3"])
    assert code == 2
    assert "epochz: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["sft", f"data=[{tmp_path}/missing.jsonl]", f"output_dir={tmp_path}/out"]) == 2
    assert "missing.jsonl: file does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.incomplete").exists()


def test_demo_and_long_configs_validate_and_point_at_the_shared_data(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the configs are written for `make demo`, run from the project root
    demo = load_config("pipeline", [preset_config_path("smollm2-demo")])
    full = load_config("pipeline", [preset_config_path("smollm2-demo"), root / "examples/smollm2-full.yaml"])
    assert demo.model == full.model == "smollm2-135m"
    # γ within the rule of docs/alignment.md, the paper's 27.8 at its 8 pretraining examples per episode
    # scaled to the demo's (1.74 at 0.5 per episode), and below it as measured there
    ppo = demo.ppo
    per_episode = ppo.ptx_batch_size / (ppo.rollout_batch_size / ppo.num_minibatches)
    assert 27.8 * per_episode / 8 == pytest.approx(1.74, abs=0.01) and 0 < ppo.ptx_coef == 0.5 < 1.74
    assert demo.judge == {"max_examples": 400} and not demo.compare_without_ptx
    assert full.compare_without_ptx and full.judge == {"max_examples": None}
    assert full.reward.max_examples == 720 and full.ppo.total_episodes > demo.ppo.total_episodes
    assert Path(demo.data.demonstrations[1]).is_file()  # the team's demonstrations, in the repository
    if not Path("../shared/data").exists():
        pytest.skip("../shared/data is not beside the project")
    for path in demo.data.demonstrations + demo.data.comparisons + demo.data.prompts + [demo.data.pretraining]:
        assert Path(path).exists(), path


@pytest.mark.parametrize("episodes, minibatches, world, problem", [
    (16, 8, 4, r"^ppo.num_minibatches \(8\) must split each process's 4 episodes \(ppo.rollout_batch_size 16 / "
               r"4 processes\)"),
    (18, 1, 4, r"^ppo.rollout_batch_size \(18\) must be divisible by the number of processes \(4\)"),
    (24, 8, 2, r"^ppo.num_minibatches \(8\) must split each process's 12 episodes"),
])
def test_ppo_batching_is_checked_per_process(episodes, minibatches, world, problem):
    """The issue's example: 16 episodes, 8 minibatches, 4 processes gave `4 // 8 = 0` and a ValueError."""
    from rlhf.config import ConfigError, PPOConfig
    from rlhf.train.ppo import check_batching

    config = PPOConfig(rollout_batch_size=episodes, num_minibatches=minibatches)
    check_batching(config, 1)  # valid on one process
    with pytest.raises(ConfigError, match=problem):
        check_batching(config, world)
    check_batching(PPOConfig(rollout_batch_size=32, num_minibatches=4), 4)  # 8 per process, 2 per minibatch


def test_rloo_batches_hold_whole_groups_of_k_on_each_process(capsys):
    from rlhf.cli import main
    from rlhf.config import ConfigError, PPOConfig
    from rlhf.train.ppo import check_batching

    assert PPOConfig(advantage="rloo", rloo_k=4, rollout_batch_size=8).group_size == 4
    assert PPOConfig(rollout_batch_size=6).group_size == 1  # gae: any batch
    config = PPOConfig(advantage="rloo", rloo_k=4, rollout_batch_size=8)
    check_batching(config, 2)  # one group of 4 on each of 2 processes
    with pytest.raises(ConfigError, match=r"^ppo.rollout_batch_size \(8\) must be divisible by ppo.rloo_k \(4\) "
                                          r"times the number of processes \(4\)"):
        check_batching(config, 4)
    assert main(["ppo", "advantage=rloo", "rloo_k=4", "rollout_batch_size=6"]) == 2
    assert "rollout_batch_size (6) must be divisible by rloo_k (4): each process samples whole groups" \
        in capsys.readouterr().err
    assert main(["ppo", "advantage=rloo", "rloo_k=1"]) == 2
    assert "rloo_k" in capsys.readouterr().err


def test_a_pipeline_stage_that_cannot_run_is_refused_before_any_stage_trains(tmp_path, capsys):
    """The RLOO stage takes the ppo section's batch: 6 episodes are not groups of rloo_k = 4. One line,
    exit 2, and no stage has started."""
    from rlhf.cli import main

    assert main(["pipeline", "--preset", "tiny", "--run-dir", str(tmp_path / "run"), "compare_methods=[rloo]",
                 "ppo.rollout_batch_size=6", "ppo.num_minibatches=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlhf: error: invalid pipeline rloo config: ")
    assert "rollout_batch_size (6) must be divisible by rloo_k (4)" in err
    assert not any((tmp_path / "run" / stage).exists() for stage in ("sft", "sft.incomplete", "reward", "ppo"))


def test_a_bad_benign_prompts_file_is_one_line_before_any_stage_trains(tmp_path, capsys):
    """``eval.benign_prompts`` is read before training: a column that is not there is the file's line and
    field, exit 2, and the run folder is never made."""
    from rlhf.cli import main

    questions = tmp_path / "questions.csv"
    questions.write_text("Type,Question\nAdversarial,What happens if you crack your knuckles?\n")
    run = tmp_path / "run"
    assert main(["pipeline", "--preset", "tiny", "--run-dir", str(run), f"eval.benign_prompts={questions}",
                 "eval.benign_prompt_field=question"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{questions}:2: missing field 'question' (mapped to 'prompt')" in err
    assert not run.exists()
