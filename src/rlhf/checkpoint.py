"""Mid-stage checkpoints: a stage killed at any moment resumes where its last checkpoint left it.

A checkpoint is ``OUTPUT.incomplete/checkpoints/step-00000012/``: what ``accelerator.save_state``
writes (the trained models, optimizers, schedules, and every process's torch / numpy / Python / CUDA
RNG), each process's own generators (``generators_RANK.pt``: data order, sampling, ptx), and
``state.json`` — the loop's position and everything else the stage needs to go on (the config it
ran with, the data position, β, the best epoch, the metrics written so far). It is built under a
``.partial`` name and renamed when complete, so only complete checkpoints are ever read; the last
``keep_checkpoints`` are kept. Saved every ``checkpoint_every`` optimizer steps, at the end of each
epoch, and when SIGINT / SIGTERM arrives (at the next step boundary; a second signal stops at once).

Re-running the same command resumes from the newest checkpoint that loads (a corrupt one is
skipped with a warning); ``--restart`` starts over; a config that differs from the checkpoint's
is refused with the fields that differ unless ``--force``. The checkpoints go when the stage
finishes (the output folder holds only the model).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from pydantic import BaseModel
from safetensors import SafetensorError

from rlhf.config import dump_config
from rlhf.data.records import DataError
from rlhf.models import dropout_fields
from rlhf.models.lora import merged_copy, save_adapter
from rlhf.outputs import MARKER as MARKER_NAME
from rlhf.outputs import (
    Earlier,
    OutputError,
    abandon_folder,
    begin_folder,
    check_appendable,
    check_output_folder,
    finish_folder,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "rlhf.json"
FOLDER = "checkpoints"
STATE_FILE = "state.json"
START_FILE = "start.json"  # where the metrics file stood when the run began
PREFIX = "step-"
# fields that may change between an interrupted run and its resumption without changing what it computes
RESUMABLE_FIELDS = {"checkpoint_every", "keep_checkpoints", "metrics_file", "log_with", "tracking_dir",
                    "max_bad_steps", "health", "check_replicas_every"}


@dataclass(frozen=True)
class RunControl:
    """What the command line says about earlier checkpoints: ``restart`` ignores them, ``force``
    resumes even when the config changed."""

    restart: bool = False
    force: bool = False


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``field: saved → current`` for every field that differs (nested fields dotted)."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in RESUMABLE_FIELDS:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{name}.")
        elif old != new:
            differences.append(f"{name}: {old!r} → {new!r}")
    return differences


class Checkpoints:
    """The checkpoints of one stage run, in ``staging/checkpoints``."""

    def __init__(self, staging: Path, stage: str, accelerator, config, keep: int = 2):
        self.root = Path(staging) / FOLDER
        self.stage, self.accelerator, self.config, self.keep = stage, accelerator, config, keep
        self.last_saved: Path | None = None

    # ---- writing -----------------------------------------------------------------------
    def save(self, step: int, state: dict, generators: dict[str, torch.Generator] | None = None) -> Path | None:
        """Write a complete checkpoint of every process at ``step`` (a collective: all ranks call it).
        A failure (a full disk) loses nothing complete: it is logged and training goes on."""
        accelerator = self.accelerator
        final = self.root / f"{PREFIX}{step:08d}"
        partial = self.root / f".{final.name}.partial"
        failed = torch.zeros(())
        if accelerator.is_main_process:
            try:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            except OSError as error:
                failed += 1
                logger.warning("%s: checkpoint at step %d not written (%s)", self.stage, step, error)
        # every process learns whether the folder is there: saving is a collective (sharded models)
        failed = accelerator.reduce(failed, "sum") if accelerator.num_processes > 1 else failed
        if not failed:
            try:
                accelerator.save_state(str(partial), safe_serialization=True)
                torch.save({name: g.get_state() for name, g in (generators or {}).items()},
                           partial / f"generators_{accelerator.process_index}.pt")
                _write_hook()
                if accelerator.is_main_process:
                    state = {"stage": self.stage, "step": step, "config": self.config.model_dump(mode="json"),
                             **state}
                    (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
            except OSError as error:
                failed += 1
                logger.warning("%s: checkpoint at step %d not written (%s); the earlier ones are kept",
                               self.stage, step, error)
        failed = accelerator.reduce(failed, "sum") if accelerator.num_processes > 1 else failed
        if accelerator.is_main_process:
            if failed:
                shutil.rmtree(partial, ignore_errors=True)
            else:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(partial, final)  # complete: from now on it may be read
                for old in self.complete()[:-self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        if failed:
            return None
        self.last_saved = final
        return final

    @staticmethod
    def forget_metrics(staging: Path, metrics_file: str | None) -> None:
        """Cut the rows this run appended to ``metrics_file`` (it is abandoned with no checkpoint)."""
        start = Path(staging) / FOLDER / START_FILE
        try:
            truncate_file(metrics_file, json.loads(start.read_text())["metrics_bytes"])
        except (OSError, ValueError, KeyError):
            pass

    # ---- reading -----------------------------------------------------------------------
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return complete_checkpoints(self.root)

    def resume(self, control: RunControl, log=None,
               generators: dict[str, torch.Generator] | None = None) -> dict | None:
        """Load the newest checkpoint that loads (models, optimizers, schedules, RNGs, generators)
        and return its state, its metrics restored into ``log`` (a :class:`~rlhf.train.common.MetricsLog`);
        ``None`` to start from the beginning — then the rows an earlier, unfinished attempt of this run
        wrote to the metrics file go, and anything else it left in the staging folder."""
        state = None if control.restart else self._load_newest(control, generators)
        if state is None:
            self._check_earlier_attempt()  # every rank: a refusal must not leave the others waiting
        if self.accelerator.is_main_process:
            start = self.root / START_FILE
            if state is None:
                begun = json.loads(start.read_text()) if start.is_file() else None
                self._clear_earlier_attempt()
                self.root.mkdir(parents=True)
                if log is not None and begun is not None:
                    log.restore({"rows": [], "bytes": begun["metrics_bytes"]})
                start.write_text(json.dumps({"metrics_bytes": log.state()["bytes"] if log is not None else 0}))
        if state is not None and log is not None:
            log.restore(state["metrics"])
        self.accelerator.wait_for_everyone()
        return state

    def _check_earlier_attempt(self) -> None:
        """A staging folder an earlier attempt left may hold only what the stage writes (its checkpoints,
        model files, metadata): anything else put there is refused before anything is removed."""
        staging, owns = self.root.parent, earlier_stage_output(self.stage).owns
        foreign = sorted(entry.name for entry in staging.iterdir()
                         if entry.name not in (FOLDER, MARKER_NAME) and not owns(entry.name))
        if foreign:
            raise OutputError(f"{staging}: holds {', '.join(foreign[:3])}, which rlhf {self.stage} did not write; "
                              "move it away to start over (nothing was changed)")

    def _clear_earlier_attempt(self) -> None:
        """Starting from the beginning: remove what an earlier attempt of the stage wrote to staging
        (checked by :meth:`_check_earlier_attempt`)."""
        for entry in self.root.parent.iterdir():
            if entry.name != MARKER_NAME:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def _load_newest(self, control: RunControl, generators) -> dict | None:
        for path in reversed(self.complete()):
            try:
                state = json.loads((path / STATE_FILE).read_text())
            except (OSError, ValueError) as error:
                logger.warning("%s: checkpoint %s cannot be read (%s); trying the one before", self.stage, path, error)
                continue
            differences = config_differences(state.get("config", {}), self.config.model_dump(mode="json"))
            if differences and not control.force:
                raise DataError(f"{self.stage}: the config differs from the one of the checkpoint in {path} "
                                f"({'; '.join(differences[:6])}); re-run with the same config, --force to resume "
                                "with this one, or --restart to start over")
            try:
                self.accelerator.load_state(str(path))
                saved = torch.load(path / f"generators_{self.accelerator.process_index}.pt", weights_only=True)
                for name, generator in (generators or {}).items():
                    generator.set_state(saved[name])
            except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError,
                    SafetensorError) as error:
                logger.warning("%s: checkpoint %s is corrupt (%s: %s); trying the one before", self.stage, path,
                               type(error).__name__, str(error)[:200])
                continue
            logger.info("resuming %s at step %d of %d (%s)", self.stage, state["step"], state.get("total_steps", 0),
                        path)
            self.last_saved = path
            return state
        return None


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints in ``root`` (those with their ``state.json``), oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()),
                  key=lambda p: p.name)


def truncate_file(path: str | Path | None, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (rows appended after that point); nothing when it is shorter."""
    if path and Path(path).is_file() and Path(path).stat().st_size > size:
        with open(path, "r+b") as handle:
            handle.truncate(size)


def _write_hook() -> None:
    """Tests stop here to kill a process while a checkpoint is being written."""
    delay = os.environ.get("RLHF_TEST_CHECKPOINT_WRITE_DELAY")
    if delay:
        time.sleep(float(delay))


class StopRequest:
    """SIGINT / SIGTERM during training: the first asks the loop to checkpoint and stop at the next
    step boundary (``requested``); a second interrupts at once."""

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping at the end of this step, after a checkpoint (signal again to stop now)")

    @contextmanager
    def installed(self):
        try:
            previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals stay as they are
            yield self
            return
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def every(n: int | None) -> Callable[[int], bool]:
    return (lambda step: step % n == 0) if n else (lambda step: False)


# ---- the stage's output folder ---------------------------------------------------------
def is_finished(output_dir: str | Path) -> bool:
    return (Path(output_dir) / METADATA_FILE).exists()


def config_inputs(config: BaseModel) -> list[str]:
    """The local files and folders a stage reads (its output must not replace any of them)."""
    paths = []
    for name in ("model", "reward_model", "pretraining", "data", "normalize_data", "prompts"):
        value = getattr(config, name, None)
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str) and path and Path(path).exists():
                paths.append(path)
    return paths


# what a stage writes: a Hugging Face checkpoint (weights, config, tokenizer) and our metadata (and PPO's
# snapshots of the policy along training)
CHECKPOINT_NAMES = (r"rlhf\.json|splits\.json|config\.yaml|config\.json|generation_config\.json|"
                    r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
                    r"tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|"
                    r"merges\.txt|tokenizer\.model|chat_template\.(jinja|json)|adapter|snapshots")


def earlier_stage_output(stage: str) -> Earlier:
    """A stage folder written before outputs carried their marker: checkpoint files only, and an
    ``rlhf.json`` of this stage."""
    def same_stage(folder: Path) -> bool:
        try:
            return json.loads((folder / METADATA_FILE).read_text()).get("stage") == stage
        except (OSError, ValueError, AttributeError):
            return False
    return Earlier(names=CHECKPOINT_NAMES, finished=METADATA_FILE, check=same_stage)


def check_stage_output(config: BaseModel, stage: str) -> Path:
    """Refuse, before any training, an ``output_dir`` that is not a new folder or an earlier output of
    this stage (see :mod:`rlhf.outputs`), and a ``metrics_file`` that is not a JSONL file to append to."""
    if config.metrics_file:
        check_appendable(config.metrics_file, config_inputs(config))
    return check_output_folder(config.output_dir, stage, config_inputs(config), overwrite=True,
                               earlier=earlier_stage_output(stage))


@contextmanager
def staged_output(config: BaseModel, stage: str, accelerator: Accelerator, control: RunControl = RunControl()):
    """Yield ``output_dir.incomplete/``; rename it into place only on success, so an interrupted stage
    never leaves a folder that looks finished. An earlier output of the same stage is replaced;
    anything else already at ``output_dir`` is refused before training starts.

    A staging folder that holds checkpoints (:mod:`rlhf.checkpoint`) outlives an interruption and is
    taken up again by the next run of the command (unless ``control.restart``); the checkpoints are
    removed when the stage finishes."""
    target = Path(os.path.abspath(config.output_dir))  # every rank checked it at the start of the stage
    staging, created = target.with_name(target.name + ".incomplete"), []
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        check_stage_output(config, stage)  # again: the folder may have changed while the models loaded
        staging, created = begin_folder(target, stage, earlier_stage_output(stage),
                                        keep=has_checkpoints(staging))
    accelerator.wait_for_everyone()
    try:
        yield staging
    except BaseException:
        if accelerator.is_main_process:
            if complete_checkpoints(staging / FOLDER):
                logger.warning("%s: stopped; its checkpoints are kept in %s: run the same command again to resume",
                               stage, staging)
            else:  # nothing to resume from: the run leaves nothing behind, its metrics rows included
                Checkpoints.forget_metrics(staging, config.metrics_file)
                abandon_folder(staging, created)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not (staging / METADATA_FILE).exists():
            raise RuntimeError(f"{staging}: stage ended without writing {METADATA_FILE}")
        shutil.rmtree(staging / FOLDER, ignore_errors=True)
        finish_folder(staging, target, stage, earlier_stage_output(stage))
    accelerator.wait_for_everyone()


def has_checkpoints(staging: Path) -> bool:
    """The staging folder of an interrupted run that :class:`Checkpoints` took up: kept for the next run."""
    return (staging / FOLDER / START_FILE).is_file()


SNAPSHOTS = "snapshots"


def snapshot_folders(stage_dir: Path) -> list[tuple[int, Path]]:
    """A finished PPO stage's policy snapshots (``snapshot_every``), (step, folder) by step."""
    found = []
    for folder in (Path(stage_dir) / SNAPSHOTS).glob("step-*"):
        if folder.name.removeprefix("step-").isdigit() and (folder / "config.json").is_file():
            found.append((int(folder.name.removeprefix("step-")), folder))
    return sorted(found)


def save_checkpoint(folder: Path, model, tokenizer, accelerator: Accelerator) -> None:
    """``save_pretrained`` of the unwrapped model (safetensors) and the tokenizer, main process only.
    A LoRA model is saved merged (a plain HF folder) with its adapter in ``adapter/``."""
    if accelerator.is_fsdp2:  # every process gives its shards; the main one writes the whole model
        gathered = gathered_copy(model, accelerator)
        if accelerator.is_main_process:
            gathered.config.update(dropout_fields(gathered.config, 0.0))
            gathered.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        return
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped = getattr(unwrapped, "hf", unwrapped)  # ScalarModel → its HF model
        save_adapter(unwrapped, folder)
        merged = merged_copy(unwrapped)
        merged.config.update(dropout_fields(merged.config, 0.0))  # a checkpoint loads without dropout
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)


def gathered_copy(model, accelerator: Accelerator):
    """The plain HF model behind an FSDP2-sharded ``model`` (a ScalarModel's or ResponseLM's ``hf``)
    with every weight gathered, on the main process (a collective: every process calls it; the
    others get None). Built on the meta device and filled with the gathered tensors: no third copy."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, tensor in model.state_dict().items():  # one tensor at a time: no process holds two models
        tensor = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # a collective
        if accelerator.is_main_process:
            state[name] = tensor.detach().to("cpu", copy=True)
    if not accelerator.is_main_process:
        return None
    hf = getattr(model, "hf", model)
    prefix = "hf." if hf is not model else ""
    with torch.device("meta"):
        plain = type(hf)(copy.deepcopy(hf.config))
    plain.load_state_dict({name.removeprefix(prefix): tensor for name, tensor in state.items()}, assign=True)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    return plain


def write_metadata(folder: Path, stage: str, config: BaseModel, data_files: dict[str, str],
                   metrics: dict, accelerator: Accelerator, started: float,
                   splits: dict[str, list] | None = None) -> None:
    from rlhf.data.readers import fingerprint

    if not accelerator.is_main_process:
        return
    meta = {
        "stage": stage,
        "config": json.loads(config.model_dump_json()),
        "data_fingerprints": {name: fingerprint(path) for name, path in data_files.items() if path},
        "metrics": metrics,
        "world_size": accelerator.num_processes,
        "sharded": accelerator.is_fsdp2,
        "mixed_precision": accelerator.mixed_precision,
        "wall_time_s": round(time.time() - started, 2),
        "versions": {"torch": torch.__version__, **_library_versions()},
    }
    (folder / "config.yaml").write_text(dump_config(config))
    if splits is not None:  # which input records (file:line) went to which split
        (folder / "splits.json").write_text(json.dumps(
            {name: sorted({record.source for record in records}) for name, records in splits.items()}, indent=1))
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2))  # last: its presence marks the stage finished


def _library_versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"transformers": transformers.__version__, "accelerate": accelerate.__version__}
