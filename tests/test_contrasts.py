"""Contrast rankings: a demonstration against the opposite behaviour (rlhf.data.contrasts)."""

import json
import logging

import pytest

from rlhf.data.contrasts import GENERIC_REFUSALS, contrast_rankings, ranking_row
from rlhf.data.readers import read_comparisons
from rlhf.data.records import Demonstration
from rlhf.eval.refusal import is_refusal


def demo(prompt: str, response: str) -> Demonstration:
    return Demonstration([{"role": "user", "content": prompt}], response, source=f"demos.jsonl:{len(prompt)}")


REFUSAL = "I'm sorry, but I can't help with stealing; it hurts people."
ANSWER = "Boil it for nine minutes, then cool it in cold water."


def test_a_refused_request_ties_the_refusals_above_the_compliant_sample():
    rankings, counts = contrast_rankings([demo("How do I steal a car?", REFUSAL)],
                                         ["First, find an unlocked car."], is_refusal)
    (ranking,) = rankings
    assert ranking.responses == [REFUSAL, GENERIC_REFUSALS[0], "First, find an unlocked car."]
    assert ranking.ranks == [1, 1, 2]
    assert counts == {"harmful": 1, "ordinary": 0, "skipped": 0}


def test_an_answered_request_puts_the_answer_then_the_sample_above_a_generic_refusal():
    demos = [demo("How do I steal a car?", REFUSAL), demo("How do I boil an egg?", ANSWER)]
    rankings, counts = contrast_rankings(demos, ["Find an unlocked car.", "Put it in water."], is_refusal)
    assert rankings[1].responses == [ANSWER, "Put it in water.", GENERIC_REFUSALS[1]]  # the second phrasing
    assert rankings[1].ranks == [1, 2, 3]
    assert counts["ordinary"] == 1


def test_a_sample_that_refuses_is_left_out_or_makes_no_ranking():
    demos = [demo("How do I steal a car?", REFUSAL), demo("How do I boil an egg?", ANSWER)]
    rankings, counts = contrast_rankings(demos, ["I can't help with that.", "I'm sorry, I cannot."], is_refusal)
    assert counts == {"harmful": 0, "ordinary": 1, "skipped": 1}
    (ranking,) = rankings  # the refused request with a refusing sample would tie two refusals
    assert ranking.responses == [ANSWER, GENERIC_REFUSALS[1]] and ranking.ranks == [1, 2]


def test_every_generic_refusal_reads_as_a_refusal():
    assert all(is_refusal(text) for text in GENERIC_REFUSALS)


def test_samples_must_match_the_demonstrations():
    with pytest.raises(ValueError, match="1 samples for 2 demonstrations"):
        contrast_rankings([demo("a", ANSWER), demo("b", ANSWER)], ["x"], is_refusal)


def test_rankings_written_as_rows_read_back_as_the_same_comparisons(tmp_path):
    demos = [demo("How do I steal a car?", REFUSAL), demo("How do I boil an egg?", ANSWER)]
    rankings, _ = contrast_rankings(demos, ["Find an unlocked car.", "Put it in water."], is_refusal)
    path = tmp_path / "contrasts.jsonl"
    path.write_text("".join(json.dumps(ranking_row(r)) + "\n" for r in rankings))
    read = read_comparisons(path)
    assert [(r.prompt, r.responses, r.ranks, r.metadata) for r in read] == \
        [(r.prompt, r.responses, r.ranks, {"contrast": kind}) for r, kind in zip(rankings, ["harmful", "ordinary"])]


def write_demos(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs))
    return path


HARMFUL = [f"How do I steal bike number {i}?" for i in range(6)]
ORDINARY = [f"How do I fix bike number {i}?" for i in range(6)]


def test_the_pipeline_writes_contrasts_once_and_gives_them_to_the_proxy_only(tmp_path, tiny_path, caplog):
    from rlhf.config import load_config, preset_config_path
    from rlhf.pipeline import data_paths, stage_configs, write_contrasts

    demos = write_demos(tmp_path / "demos.jsonl", [(p, REFUSAL) for p in HARMFUL] + [(p, ANSWER) for p in ORDINARY])
    config = load_config("pipeline", [preset_config_path("tiny")], [f"data.contrasts=[{demos}]",
                                                                     "eval.max_new_tokens=8"])
    run_dir = tmp_path / "run"
    stages = stage_configs(config, run_dir, data_paths(config, run_dir, write=False))
    contrasts = run_dir / "data" / "contrasts.jsonl"
    assert stages["reward"].full_data == [str(contrasts)] and stages["judge"].full_data == []
    assert not contrasts.exists()  # validation names the file, writes nothing

    write_contrasts(config, run_dir)
    rankings = read_comparisons(contrasts)
    # the random tiny model never refuses: every request is ranked, each against its own sample
    assert [r.metadata["contrast"] for r in rankings] == ["harmful"] * 6 + ["ordinary"] * 6
    assert [r.ranks for r in rankings] == [[1, 1, 2]] * 6 + [[1, 2, 3]] * 6
    assert all(r.responses[0] == (REFUSAL if r.metadata["contrast"] == "harmful" else ANSWER) for r in rankings)
    assert len({r.responses[2 if r.metadata["contrast"] == "harmful" else 1] for r in rankings}) > 1  # sampled
    written = contrasts.read_bytes()
    caplog.set_level(logging.INFO, logger="rlhf.pipeline")
    write_contrasts(config, run_dir)
    assert contrasts.read_bytes() == written and "written earlier" in caplog.text


def test_the_reward_model_trains_on_every_full_data_record_beside_its_sample(tmp_path, tiny_path):
    from rlhf.config import load_config
    from rlhf.data.synthetic import write_synthetic_data
    from rlhf.train.reward import train_reward

    data = write_synthetic_data(tmp_path / "data", n_demos=8, n_comparisons=40, n_prompts=8)
    demos = [demo(p, REFUSAL) for p in HARMFUL] + [demo(p, ANSWER) for p in ORDINARY]
    rankings, _ = contrast_rankings(demos, [f"Sample {i}." for i in range(12)], is_refusal)
    full = tmp_path / "contrasts.jsonl"
    full.write_text("".join(json.dumps(ranking_row(r)) + "\n" for r in rankings))
    train_reward(load_config("reward", [], [
        f"model={tiny_path}", f"data=[{data['comparisons']}]", f"full_data=[{full}]", "max_examples=5",
        "valid_fraction=0.2", "test_fraction=0.2", "max_steps=1", "batch_size=4", "max_length=256",
        f"output_dir={tmp_path / 'rm'}"]))
    splits = json.loads((tmp_path / "rm" / "splits.json").read_text())
    trained_files = [source.rpartition(":")[0] for source in splits["trained"]]
    contrast_parts = {part: sum(s.startswith(str(full)) for s in splits[part]) for part in ("train", "valid", "test")}
    assert trained_files.count(data["comparisons"]) == 5  # the sample of data
    assert trained_files.count(str(full)) == contrast_parts["train"] > 0  # every contrast of the training split
    assert sum(contrast_parts.values()) == 12
    meta = json.loads((tmp_path / "rm" / "rlhf.json").read_text())
    assert meta["config"]["full_data"] == [str(full)]
    # a judge disjoint from it, given the same full_data, trains on none of the first one's records
    train_reward(load_config("reward", [], [
        f"model={tiny_path}", f"data=[{data['comparisons']}]", f"full_data=[{full}]", "max_examples=5",
        "valid_fraction=0.2", "test_fraction=0.2", "max_steps=1", "batch_size=4", "max_length=256",
        f"disjoint_from={tmp_path / 'rm'}", f"output_dir={tmp_path / 'judge'}"]))
    judged = json.loads((tmp_path / "judge" / "splits.json").read_text())["trained"]
    assert judged and not set(judged) & set(splits["trained"])


def test_contrasts_without_a_single_refusal_are_written_with_a_warning(tmp_path, monkeypatch, caplog):
    import rlhf.generate
    from rlhf.config import load_config, preset_config_path
    from rlhf.pipeline import write_contrasts

    demos = write_demos(tmp_path / "answers.jsonl", [(p, ANSWER) for p in ORDINARY])
    monkeypatch.setattr(rlhf.generate, "generate", lambda model, prompts, *args, **kwargs: ["Sure."] * len(prompts))
    config = load_config("pipeline", [preset_config_path("tiny")], [f"data.contrasts=[{demos}]"])
    caplog.set_level(logging.WARNING, logger="rlhf.pipeline")
    write_contrasts(config, tmp_path / "run")
    assert len(read_comparisons(tmp_path / "run" / "data" / "contrasts.jsonl")) == 6
    assert f"no refused (harmful) request among the rankings of {demos}" in caplog.text
    assert "teach only that refusing loses" in caplog.text
