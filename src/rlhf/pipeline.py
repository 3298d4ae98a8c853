"""SFT → reward model → PPO-ptx into RUN_DIR/{sft,reward,ppo}/, each an HF folder.

A stage whose folder is finished (has ``rlhf.json``) is skipped on re-run; stages write under
a temporary name and rename when complete.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import yaml

from rlhf.checkpoint import METADATA_FILE, RunControl, is_finished
from rlhf.config import PipelineConfig, build_config, dump_config
from rlhf.data.readers import DataError
from rlhf.data.synthetic import synthetic_paths, write_synthetic_data
from rlhf.outputs import OutputError, write_run_file

logger = logging.getLogger(__name__)


def _stage(config, name: str, **update):
    """A stage config with the pipeline's fields filled in, validated again (a problem is a one-line
    :class:`ConfigError` naming the stage, before any stage trains)."""
    return build_config(type(config), {**config.model_dump(), **update}, f"pipeline {name}")


def data_paths(config: PipelineConfig, run_dir: Path, write: bool = True) -> dict:
    """The data files of each kind; the synthetic task's are written into RUN_DIR/data (``write``:
    False names them only, to validate before anything is written)."""
    data = config.data
    contrasts = [str(contrasts_path(run_dir))] if data.contrasts else []
    if data.synthetic:
        folder = run_dir / "data"
        paths = write_synthetic_data(folder, seed=config.seed) if write else synthetic_paths(folder)
        return {"demonstrations": [paths["demonstrations"]], "comparisons": [paths["comparisons"]],
                "prompts": [paths["prompts"]], "pretraining": paths["pretraining"], "contrasts": contrasts}
    if not data.demonstrations or not data.comparisons:
        raise DataError("pipeline: data.demonstrations and data.comparisons are required "
                        "(or data.synthetic: true for the tiny task)")
    return {"demonstrations": data.demonstrations, "comparisons": data.comparisons,
            "prompts": data.prompts or data.comparisons, "pretraining": data.pretraining, "contrasts": contrasts}


def contrasts_path(run_dir: Path) -> Path:
    return run_dir / "data" / "contrasts.jsonl"


def write_contrasts(config: PipelineConfig, run_dir: Path) -> None:
    """RUN_DIR/data/contrasts.jsonl: each demonstration of ``data.contrasts`` ranked against the base
    model's own response and a generic refusal (:mod:`rlhf.data.contrasts`). The base model samples
    with the evaluation's settings; a file written by an earlier run is kept."""
    from rlhf.data.contrasts import contrast_rankings, ranking_row
    from rlhf.data.readers import read_demonstrations
    from rlhf.eval.refusal import is_refusal
    from rlhf.generate import generate
    from rlhf.outputs import write_jsonl

    path = contrasts_path(run_dir)
    if path.exists():
        logger.info("contrasts: written earlier in %s, kept", path)
        return
    demos = [d for p in config.data.contrasts for d in read_demonstrations(p, config.data.skip_invalid)]
    samples = generate(config.model, [d.prompt for d in demos], config.eval.max_new_tokens, config.eval.temperature,
                       seed=config.seed, batch_size=config.eval.batch_size)
    rankings, counts = contrast_rankings(demos, samples, is_refusal)
    if not counts["harmful"] or not counts["ordinary"]:
        logger.warning("contrasts: no %s request among the rankings of %s, so they can teach only that refusing "
                       "%s; the mirror is what makes them teach when to refuse (docs/alignment.md)",
                       "refused (harmful)" if not counts["harmful"] else "answered (ordinary)",
                       ", ".join(config.data.contrasts), "loses" if not counts["harmful"] else "wins")
    write_jsonl(path, map(ranking_row, rankings), inputs=config.data.contrasts)
    logger.info("contrasts: %d harmful and %d ordinary requests ranked (%d left out: the base model refused a "
                "harmful one too) into %s", counts["harmful"], counts["ordinary"], counts["skipped"], path)


def stage_configs(config: PipelineConfig, run_dir: Path, paths: dict) -> dict:
    common = {"seed": config.seed, "skip_invalid": config.data.skip_invalid,
              "valid_fraction": config.valid_fraction, "test_fraction": config.test_fraction,
              "metrics_file": str(run_dir / "metrics.jsonl"), "chat_template": config.chat_template}
    sft_dir, reward_dir = str(run_dir / "sft"), str(run_dir / "reward")
    ppo_update = {"model": sft_dir, "reward_model": reward_dir, "output_dir": str(run_dir / "ppo"),
                  "prompts": paths["prompts"], "prompt_weights": config.data.prompt_weights,
                  "pretraining": paths["pretraining"], **common}
    if not paths["pretraining"]:
        ppo_update["ptx_coef"] = 0.0
    stages = {
        "sft": _stage(config.sft, "sft", model=config.model, output_dir=sft_dir, data=paths["demonstrations"],
                      **common),
        "reward": _stage(config.reward, "reward", model=sft_dir, output_dir=reward_dir, data=paths["comparisons"],
                         full_data=config.reward.full_data + paths["contrasts"],
                         normalize_data=paths["demonstrations"], **common),
    }
    if config.judge is not None:  # the base model on comparisons the proxy never trained on
        judge = {"model": config.model, **config.judge}
        stages["judge"] = _stage(config.reward, "judge", **{
            **judge, "output_dir": str(run_dir / "judge"), "data": paths["comparisons"],
            "normalize_data": paths["demonstrations"], "disjoint_from": reward_dir, **common})
    stages["ppo"] = _stage(config.ppo, "ppo", **ppo_update)
    without_ptx = {**ppo_update, "ptx_coef": 0.0, "snapshot_every": 0}
    if config.compare_without_ptx:
        stages["ppo-noptx"] = _stage(config.ppo, "ppo-noptx", **{**without_ptx,
                                                                 "output_dir": str(run_dir / "ppo-noptx")})
    if "rloo" in config.compare_methods:  # the same prompts and episodes, k samples per prompt, no critic
        stages["rloo"] = _stage(config.ppo, "rloo", **{**without_ptx, "output_dir": str(run_dir / "rloo"),
                                                       "advantage": "rloo"})
    if "dpo" in config.compare_methods:
        stages["dpo"] = _stage(config.dpo, "dpo", model=sft_dir, output_dir=str(run_dir / "dpo"),
                               data=paths["comparisons"], **common)
    return stages


RUN_MARKER = ".rlhf-run"


def is_run_dir(folder: str | Path) -> bool:
    """A run folder of ours: its marker, or (written before the marker) a ``config.yaml`` that is a
    pipeline config (it has the sft, reward and ppo sections)."""
    folder = Path(folder)
    if (folder / RUN_MARKER).is_file():
        return True
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"sft", "reward", "ppo"} <= set(config)


def prepare_run_dir(run_dir: Path) -> None:
    """Use ``run_dir`` only when it is new, empty or an earlier run of ours: the pipeline writes
    ``config.yaml``, ``summary.json`` and reports there and must not replace a user's files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is a file; --run-dir must be a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_run_dir(run_dir):
        raise OutputError(f"{run_dir}: exists and is not an rlhf run folder; choose a new --run-dir "
                          "(nothing was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).touch()


def run_pipeline(config: PipelineConfig, run_dir: str | Path, control: RunControl = RunControl()) -> dict:
    from rlhf.train.dpo import train_dpo
    from rlhf.train.ppo import check_batching, train_ppo
    from rlhf.train.reward import train_reward
    from rlhf.train.sft import train_sft

    run_dir = Path(run_dir)
    # every stage's config validated (a one-line error) before anything is written
    stages = stage_configs(config, run_dir, data_paths(config, run_dir, write=False))
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's; every PPO-like stage checked before any trains
    for name, stage_config in stages.items():
        if name in ("ppo", "ppo-noptx", "rloo"):
            check_batching(stage_config, world)
    if config.eval.enabled:  # the evaluation's own data file, read before an hour of training
        from rlhf.eval.run import benign_prompts

        benign_prompts(config)
    prepare_run_dir(run_dir)
    paths = data_paths(config, run_dir)
    stages = stage_configs(config, run_dir, paths)
    write_run_file(run_dir / "config.yaml", dump_config(config))
    trainers = {"sft": train_sft, "reward": train_reward, "judge": train_reward, "ppo": train_ppo,
                "ppo-noptx": train_ppo, "rloo": train_ppo, "dpo": train_dpo}
    summary = {}
    for name, stage_config in stages.items():
        folder = Path(stage_config.output_dir)
        if is_finished(folder):
            logger.info("%s: finished earlier in %s, skipping", name, folder)
            summary[name] = json.loads((folder / METADATA_FILE).read_text())["metrics"]
            continue
        if name == "reward" and paths["contrasts"]:
            write_contrasts(config, run_dir)
        summary[name] = trainers[name](stage_config, control)
    write_run_file(run_dir / "summary.json", json.dumps(summary, indent=2))
    if config.eval.enabled and (run_dir / "eval.json").exists():
        logger.info("eval: finished earlier in %s, skipping", run_dir / "eval.json")
        summary["eval"] = json.loads((run_dir / "eval.json").read_text())
    elif config.eval.enabled:
        from rlhf.eval.run import evaluate_run

        summary["eval"] = evaluate_run(run_dir, config, paths)
    from rlhf.eval.html_report import write_html_report

    write_html_report(run_dir)
    return summary
