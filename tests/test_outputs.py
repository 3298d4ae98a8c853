"""No command deletes or overwrites what it did not create (issue "Hostile input", class 1).

Each test plants the user's files first, runs the command through ``rlhf.cli.main`` and then checks,
byte for byte, that they are still there; refusals are one line, exit 2, and leave nothing behind."""

import json
import os
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.outputs import MARKER, OutputError, output_file, output_folder, write_jsonl

PAIRS = [{"prompt": f"question {i} about topic {i * 7}", "chosen": f"good answer {i}", "rejected": f"bad {i}",
          "user_id": f"u{i % 5}"} for i in range(30)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def user_folder(tmp_path):
    """A user's project folder: their data and an unrelated file."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    (folder / "notes.txt").write_text("my notes, not rlhf's\n")
    return folder


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, error: str, needle: str) -> None:
    assert code == 2, error
    assert len(error.splitlines()) == 1 and error.startswith("rlhf: error: "), error
    assert needle in error, error


def test_curate_into_the_folder_that_holds_its_input_deletes_nothing(user_folder, capsys):
    """The data-loss report: `data curate FILE --output DIR`, DIR holding FILE, deleted DIR and exited 0."""
    before = snapshot(user_folder)
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", user_folder, "--no-scrub")
    assert_refused(code, error, "would replace the input")
    assert snapshot(user_folder) == before
    assert sorted(p.name for p in user_folder.parent.iterdir()) == ["project"]  # no .incomplete either
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", user_folder,
                      "--no-scrub", "--overwrite")
    assert_refused(code, error, "would replace the input")
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("output", [".", "..", "{cwd}"])
def test_curate_refuses_the_current_folder_and_its_parents(user_folder, capsys, monkeypatch, output):
    work = user_folder / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(user_folder)
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output",
                      output.format(cwd=os.getcwd()), "--no-scrub", "--overwrite")
    assert_refused(code, error, "is the current folder or holds it")
    assert snapshot(user_folder) == before


def test_curate_refuses_a_file_and_a_folder_of_someone_else(user_folder, tmp_path, capsys):
    before = snapshot(user_folder)
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", user_folder / "notes.txt",
                      "--no-scrub")
    assert_refused(code, error, "exists and is a file")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "train.jsonl").write_text("their own training data\n")
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", theirs, "--no-scrub",
                      "--overwrite")
    assert_refused(code, error, "holds files rlhf data curate did not write")
    assert (theirs / "train.jsonl").read_text() == "their own training data\n"
    assert snapshot(user_folder) == before


def test_curate_replaces_only_its_own_earlier_output_and_only_with_overwrite(user_folder, tmp_path, capsys):
    out = tmp_path / "curated"
    args = ("data", "curate", user_folder / "pairs.jsonl", "--output", out, "--no-scrub")
    assert run(capsys, *args)[0] == 0
    assert json.loads((out / MARKER).read_text())["files"] == ["curation_report.json", "test.jsonl", "train.jsonl",
                                                                "valid.jsonl"]
    first = snapshot(out)
    code, error = run(capsys, *args)
    assert_refused(code, error, "pass --overwrite to replace it")
    assert run(capsys, *args, "--overwrite", "--seed", "3")[0] == 0
    assert snapshot(out) != first and not out.with_name("curated.incomplete").exists()
    # a file the user put into our folder later is never deleted
    (out / "my_analysis.ipynb").write_text("{}")
    code, error = run(capsys, *args, "--overwrite")
    assert_refused(code, error, "my_analysis.ipynb, which rlhf data curate did not write")
    assert (out / "my_analysis.ipynb").read_text() == "{}"


def test_curate_recognises_a_folder_written_before_the_marker(user_folder, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "curation_report.json"):
        (out / name).write_text("{}\n")
    assert run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", out, "--no-scrub",
               "--overwrite")[0] == 0
    assert (out / MARKER).exists()


def test_a_failing_curate_leaves_nothing_behind(user_folder, tmp_path, capsys, monkeypatch):
    import rlhf.data.curate as curate

    def explode(record):
        raise KeyboardInterrupt  # Ctrl-C half-way through writing

    monkeypatch.setattr(curate, "to_canonical", explode)
    out = tmp_path / "new" / "deeper" / "curated"
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", out, "--no-scrub")
    assert code == 130 and error == "rlhf: interrupted"
    assert not (tmp_path / "new").exists()  # neither the staging folder nor the parents it created


def test_a_symlinked_output_folder_is_refused(user_folder, tmp_path, capsys):
    link = tmp_path / "curated"
    link.symlink_to(user_folder)
    before = snapshot(user_folder)
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", link, "--no-scrub",
                      "--overwrite")
    assert_refused(code, error, "is a symbolic link")
    assert snapshot(user_folder) == before and link.is_symlink()


def test_a_staging_folder_rlhf_did_not_make_is_refused(user_folder, tmp_path, capsys):
    staging = tmp_path / "curated.incomplete"
    staging.mkdir()
    (staging / "keep.txt").write_text("mine")
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output", tmp_path / "curated",
                      "--no-scrub")
    assert_refused(code, error, "curated.incomplete: exists and was not made by rlhf data curate")
    assert (staging / "keep.txt").read_text() == "mine"


def test_convert_never_replaces_an_input_a_folder_or_a_foreign_file(user_folder, capsys):
    before = snapshot(user_folder)
    source = user_folder / "pairs.jsonl"
    for output, needle in ((source, "would replace the input"), (user_folder, "is a folder"),
                           (user_folder / "notes.txt", "exists; pass --overwrite")):
        code, error = run(capsys, "data", "convert", source, "--output", output)
        assert_refused(code, error, needle)
    for output, needle in ((source, "would replace the input"), (user_folder / "notes.txt", "does not look like")):
        code, error = run(capsys, "data", "convert", source, "--output", output, "--overwrite")
        assert_refused(code, error, needle)
    link = user_folder / "alias.jsonl"
    link.symlink_to(source)
    code, error = run(capsys, "data", "convert", source, "--output", link, "--overwrite")
    assert_refused(code, error, "would replace the input")
    link.unlink()
    assert snapshot(user_folder) == before


def test_convert_replaces_its_own_jsonl_with_overwrite(user_folder, tmp_path, capsys):
    out = tmp_path / "pairs.canonical.jsonl"
    args = ("data", "convert", user_folder / "pairs.jsonl", "--output", out)
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 2
    assert run(capsys, *args, "--overwrite", "--pairs")[0] == 0
    assert len(out.read_text().splitlines()) == len(PAIRS)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_output_file_removes_its_temporary_file_on_failure(tmp_path):
    target = tmp_path / "a" / "out.jsonl"
    with pytest.raises(RuntimeError), output_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert not (tmp_path / "a").exists()
    write_jsonl(target, [{"x": 1}])
    assert target.read_text() == '{"x": 1}\n'
    with pytest.raises(OutputError, match="pass --overwrite"):
        write_jsonl(target, [{"x": 2}])


def test_output_folder_keeps_the_result_when_files_appear_meanwhile(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="kept in"):
        with output_folder(target, "data curate") as staging:
            (staging / "train.jsonl").write_text("{}\n")
            target.mkdir()
            (target / "theirs.txt").write_text("arrived while we ran")
    assert (target / "theirs.txt").read_text() == "arrived while we ran"
    assert (tmp_path / "out.incomplete" / "train.jsonl").exists()


def test_a_stage_refuses_an_output_dir_it_did_not_write(tmp_path, capsys):
    from rlhf.checkpoint import check_stage_output
    from rlhf.config import SFTConfig

    theirs = tmp_path / "my-model"
    theirs.mkdir()
    (theirs / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="holds files rlhf sft did not write"):
        check_stage_output(SFTConfig(output_dir=str(theirs)), "sft")
    # an earlier reward stage's folder is not an sft output either
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "rlhf.json").write_text(json.dumps({"stage": "reward"}))
    with pytest.raises(OutputError, match="did not write"):
        check_stage_output(SFTConfig(output_dir=str(tmp_path / "rm")), "sft")
    data = tmp_path / "demos.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    with pytest.raises(OutputError, match="would replace the input"):
        check_stage_output(SFTConfig(output_dir=str(tmp_path), data=[str(data)]), "sft")
    code, error = run(capsys, "sft", f"output_dir={theirs}", f"data=[{data}]", "max_steps=1", "epochs=1")
    assert_refused(code, error, "holds files rlhf sft did not write")
    assert sorted(p.name for p in theirs.iterdir()) == ["config.json"]


def test_pipeline_and_report_refuse_a_folder_that_is_not_a_run(user_folder, capsys):
    from rlhf.pipeline import prepare_run_dir

    before = snapshot(user_folder)
    with pytest.raises(OutputError, match="is not an rlhf run folder"):
        prepare_run_dir(user_folder)
    code, error = run(capsys, "pipeline", "--preset", "tiny", "--run-dir", user_folder)
    assert_refused(code, error, "is not an rlhf run folder")
    code, error = run(capsys, "report", user_folder)
    assert_refused(code, error, "not an rlhf run folder")
    assert snapshot(user_folder) == before


def test_label_export_refuses_a_missing_database_and_a_foreign_folder(tmp_path, capsys):
    missing = tmp_path / "labels-typo.db"
    out = tmp_path / "labeled"
    out.mkdir()
    (out / "comparisons.jsonl").write_text('{"prompt": "kept", "chosen": "a", "rejected": "b"}\n')
    code, error = run(capsys, "label", "export", "--db", missing, "--output", out)
    assert_refused(code, error, "no such database")
    assert not missing.exists()
    assert (out / "comparisons.jsonl").read_text().startswith('{"prompt": "kept"')


def test_an_input_reached_through_a_link_is_never_replaced(user_folder, tmp_path, capsys):
    alias = tmp_path / "alias"
    alias.symlink_to(user_folder)
    before = snapshot(user_folder)
    code, error = run(capsys, "data", "curate", alias / "pairs.jsonl", "--output", user_folder, "--no-scrub",
                      "--overwrite")
    assert_refused(code, error, "would replace the input")
    spelt = user_folder / ".." / "project" / "pairs.jsonl"
    code, error = run(capsys, "data", "convert", user_folder / "pairs.jsonl", "--output", spelt, "--overwrite")
    assert_refused(code, error, "would replace the input")
    assert snapshot(user_folder) == before


def test_output_paths_through_a_file_or_an_unwritable_place_are_one_line(user_folder, capsys):
    code, error = run(capsys, "data", "convert", user_folder / "pairs.jsonl", "--output",
                      user_folder / "notes.txt" / "out.jsonl")
    assert_refused(code, error, "a folder on its path is a file")
    code, error = run(capsys, "data", "curate", user_folder / "pairs.jsonl", "--output",
                      user_folder / "notes.txt" / "curated", "--no-scrub")
    assert_refused(code, error, "a folder on its path is a file")  # refused before the data is read


def _stage_folder(folder: Path, stage: str, marker: bool) -> None:
    folder.mkdir()
    (folder / "rlhf.json").write_text(json.dumps({"stage": stage}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    if marker:
        (folder / MARKER).write_text(json.dumps({"command": stage, "files": ["model.safetensors", "rlhf.json",
                                                                              "tokenizer.json"]}))


@pytest.mark.parametrize("marker", [True, False], ids=["marked", "written-before-the-marker"])
def test_a_stage_replaces_its_own_earlier_folder_but_never_a_file_put_in_it(tmp_path, marker):
    from rlhf.checkpoint import check_stage_output, earlier_stage_output
    from rlhf.config import SFTConfig

    folder = tmp_path / "sft"
    _stage_folder(folder, "sft", marker)
    check_stage_output(SFTConfig(output_dir=str(folder)), "sft")  # accepted: ours
    with output_folder(folder, "sft", earlier=earlier_stage_output("sft")) as staging:
        (staging / "rlhf.json").write_text(json.dumps({"stage": "sft", "run": 2}))
    assert json.loads((folder / "rlhf.json").read_text())["run"] == 2 and not (folder / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sft"]  # no staging or replaced folder left
    (folder / "MY_NOTES.txt").write_text("mine")
    with pytest.raises(OutputError, match="MY_NOTES.txt, which rlhf sft did not write"):
        check_stage_output(SFTConfig(output_dir=str(folder)), "sft")
    assert (folder / "MY_NOTES.txt").read_text() == "mine"


def test_a_staging_folder_left_by_kill_9_is_removed_on_the_next_run(tmp_path):
    from rlhf.checkpoint import earlier_stage_output

    left = tmp_path / "ppo.incomplete"
    left.mkdir()
    (left / MARKER).write_text(json.dumps({"command": "ppo", "files": []}))
    (left / "model.safetensors").write_bytes(b"half")
    old = tmp_path / "sft.incomplete"  # left by a version before the marker: checkpoint files only
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"half")
    for name in ("ppo", "sft"):
        with output_folder(tmp_path / name, name, earlier=earlier_stage_output(name)) as staging:
            (staging / "rlhf.json").write_text(json.dumps({"stage": name}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppo", "sft"]
    assert not (tmp_path / "ppo" / "model.safetensors").exists()


def test_label_export_into_a_foreign_folder_and_over_its_own(tmp_path, capsys, monkeypatch):
    from label_helpers import PASSWORD

    database = tmp_path / "labels.db"
    monkeypatch.setenv("RLHF_LABEL_PASSWORD", PASSWORD)
    assert main(["label", "add-user", "--db", str(database), "ann"]) == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "comparisons.jsonl").write_text('{"prompt": "kept", "chosen": "a", "rejected": "b"}\n')
    capsys.readouterr()
    code, error = run(capsys, "label", "export", "--db", database, "--output", theirs, "--overwrite")
    assert_refused(code, error, "holds files rlhf label export did not write")
    assert (theirs / "comparisons.jsonl").read_text().startswith('{"prompt": "kept"')
    out = tmp_path / "labeled"
    assert run(capsys, "label", "export", "--db", database, "--output", out)[0] == 0
    code, error = run(capsys, "label", "export", "--db", database, "--output", out)
    assert_refused(code, error, "pass --overwrite")
    assert run(capsys, "label", "export", "--db", database, "--output", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "comparisons.jsonl", "demonstrations.jsonl"]


def test_a_run_folder_written_before_the_marker_is_recognised_by_its_config(tmp_path):
    from rlhf.config import PipelineConfig, dump_config
    from rlhf.pipeline import is_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model: mine\nlr: 3\n")  # somebody's own config
    assert not is_run_dir(run_dir)
    (run_dir / "config.yaml").write_text(dump_config(PipelineConfig()))
    assert is_run_dir(run_dir)


def test_sigterm_leaves_only_a_checkpoint_to_resume_from(tmp_path):
    """`kill PID` (or a scheduler's time limit) mid-training: one line, exit 130, no output that looks
    finished — only NAME.incomplete/ with the checkpoint written on the way out (tests/test_resume.py
    resumes from it)."""
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "response": "word " * 20}) + "\n" for i in range(64)))
    output = tmp_path / "sft"
    process = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "sft", "model=tiny", f"data=[{data}]",
                                f"output_dir={output}", "epochs=1000", "batch_size=2", "mixed_precision=fp32"],
                               stderr=subprocess.PIPE, text=True)
    staging = tmp_path / "sft.incomplete"
    deadline = time.time() + 120
    while not staging.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert staging.exists(), "training never started"
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=60)
    assert process.returncode == 130 and "rlhf: interrupted" in error and "Traceback" not in error, error[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.jsonl", "sft.incomplete"]
    assert [p.name.split("-")[0] for p in (staging / "checkpoints").iterdir() if p.name != "start.json"] == ["step"]


def test_a_failed_preset_build_removes_only_its_own_staging_folder(tmp_path, monkeypatch):
    import os

    from rlhf.models import presets

    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    theirs = tmp_path / f"tiny.tmp-{os.getpid()}"  # the name older versions used, here somebody's folder
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")

    def broken(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(presets.PRESETS, "tiny", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        presets.resolve_model_path("tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", theirs.name]  # the lock is ours, empty
    assert (theirs / "keep.txt").read_text() == "mine"


def test_processes_that_ask_for_a_preset_at_once_build_it_once(tmp_path):
    """The ranks of a torchrun on a fresh machine: one builds, the others wait and load it."""
    import os
    import subprocess
    import sys

    code = "from rlhf.models.presets import resolve_model_path; print(resolve_model_path('tiny'))"
    env = dict(os.environ, RLHF_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(3)]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], results
    assert {out.strip() for out, _ in results} == {str(tmp_path / "tiny")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "tiny"]


def test_the_signing_key_never_removes_a_file_it_did_not_create(tmp_path, monkeypatch):
    from rlhf.label import security

    database = tmp_path / "labels.db"
    names = iter(["0" * 16, "1" * 16])
    monkeypatch.setattr(security.secrets, "token_hex", lambda n: next(names, "k" * 2 * n))
    theirs = tmp_path / f"labels.db.key.{'0' * 16}.tmp"
    theirs.write_text("somebody's file")
    monkeypatch.delenv(security.SECRET_KEY_VARIABLE, raising=False)
    key = security.load_secret_key(database)
    assert theirs.read_text() == "somebody's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, "labels.db.key"])
    assert key == "k" * 64
