"""Bad command lines, configs and model paths: one line, exit 2, before anything is loaded or trained."""

import json

import pytest

from rlhf.cli import main


def one_line_error(capsys, *argv) -> str:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's errors (one line, through rlhf.arguments.Parser)
        code = exit.code
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    lines = [line for line in error.splitlines() if line.startswith("rlhf")]
    assert len(lines) == 1 and "Traceback" not in error, error
    return lines[0]


@pytest.fixture
def demos(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    return path


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=abc", "learning_rate=-1"], "invalid sft config: batch_size: Input should be a valid integer"),
    (["seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["data=[x"], "override 'data=[x': invalid YAML"),
])
def test_config_errors_are_one_line(capsys, overrides, message):
    assert message in one_line_error(capsys, "sft", *overrides)


def test_ppo_betas_must_be_betas(capsys):
    assert "adam_betas.0: Input should be less than 1" in one_line_error(capsys, "ppo", "adam_betas=[2,3]")


@pytest.mark.parametrize("content, message", [
    (b"\x00\xff", "cannot be read as a YAML text file"), (b"a: [1\nb: 2\n", ":2: invalid YAML"),
    (b"- a list\n", "expected a mapping at the top level")])
def test_bad_config_files_are_one_line(capsys, tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert message in one_line_error(capsys, "sft", "--config", path)
    assert "not a file" in one_line_error(capsys, "pipeline", "--config", tmp_path, "--run-dir", tmp_path / "run")


def test_a_model_path_that_is_no_model_is_one_line(capsys, tmp_path, demos):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for model, message in ((tmp_path / "missing", "no such model folder"), (demos, "is a file, not a model folder"),
                           (tmp_path / "empty", "not a model folder (no config.json in it)"),
                           (broken, "cannot be loaded")):
        line = one_line_error(capsys, "sft", f"model={model}", f"data=[{demos}]", f"output_dir={tmp_path / 'out'}")
        assert f"{model}: {message}" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.incomplete").exists()


def test_a_metrics_file_that_is_a_folder_or_foreign_is_refused_before_training(capsys, tmp_path, demos):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for metrics, message in ((tmp_path, "is a folder or lies under a file"), (notes, "is not a JSONL file")):
        line = one_line_error(capsys, "sft", f"data=[{demos}]", f"metrics_file={metrics}",
                              f"output_dir={tmp_path / 'out'}")
        assert message in line, line
    assert notes.read_text() == "my notes\n"


def test_report_never_replaces_a_report_it_did_not_write(capsys, tmp_path):
    from rlhf.config import PipelineConfig, dump_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(PipelineConfig()))
    (run_dir / "metrics.jsonl").write_text('{"stage": "sft", "run": "sft", "step": 1, "sft/loss": 2.0}\n')
    (run_dir / "report.html").write_text("MY NOTES\n")
    assert "report.html: exists and does not look like a file rlhf wrote" in one_line_error(capsys, "report", run_dir)
    assert (run_dir / "report.html").read_text() == "MY NOTES\n"
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0 and main(["report", str(run_dir)]) == 0  # its own: replaced


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "tiny", "--prompt", "hi", "--max-new-tokens", "-1"], "--max-new-tokens: -1 is out of"),
    (["generate", "--model", "tiny", "--prompt", "hi", "--temperature", "nan"], "--temperature: nan is out of range"),
    (["eval", "winrate", "--limit", "0"], "--limit: 0 is out of range"),
    (["eval", "benchmarks", "--model", "tiny", "--data-dir", "/nonexistent"], "/nonexistent: no such folder"),
])
def test_command_line_numbers_and_folders_are_checked_first(capsys, argv, message):
    assert message in one_line_error(capsys, *argv)


@pytest.mark.parametrize("override, message", [
    ("judge.bogus=1", "invalid pipeline judge config: bogus: Extra inputs are not permitted"),
    ("judge.train_layers=0", "invalid pipeline judge config: train_layers: Input should be greater than or equal to 1"),
])
def test_a_bad_stage_setting_stops_the_pipeline_before_it_writes_anything(capsys, tmp_path, override, message):
    run_dir = tmp_path / "run"
    assert message in one_line_error(capsys, "pipeline", "--preset", "tiny", "--run-dir", run_dir, override)
    assert not run_dir.exists()  # not even the synthetic data or the run marker
