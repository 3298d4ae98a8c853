"""What every stage shares: the accelerator, metrics, checkpoint folders written atomically,
and the optimizer/schedule. Stages are thin loops on top of these."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from pydantic import BaseModel
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from rlhf.config import dump_config
from rlhf.models import dropout_fields
from rlhf.models.lora import merged_copy, save_adapter, trainable_parameters
from rlhf.outputs import Earlier, abandon_folder, begin_folder, check_appendable, check_output_folder, finish_folder

logger = logging.getLogger(__name__)
METADATA_FILE = "rlhf.json"


def cpu_has_fast_bf16() -> bool:
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(setting: str) -> str:
    """Our setting → accelerate's (``fp32`` is accelerate's ``no``)."""
    if setting == "fp32":
        return "no"
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


def inference_dtype() -> torch.dtype | None:
    """bf16 where the hardware has fast bf16 (scoring and sampling outside a training loop), else None."""
    return torch.bfloat16 if resolve_mixed_precision("auto") == "bf16" else None


def inference_autocast():
    """bf16 autocast for scoring and sampling outside a training loop, where the hardware has fast bf16."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=inference_dtype() is not None)


def make_accelerator(config, gradient_accumulation_steps: int = 1) -> Accelerator:
    """The stage's Accelerator. accelerate keeps one mixed-precision setting per process: the state a
    previous stage of the pipeline left is dropped first (the process group is kept)."""
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )
    set_seed(config.seed)
    if torch.get_num_threads() > 1 and accelerator.num_processes > 1 and not torch.cuda.is_available():
        # processes on one CPU must share the cores, or they thrash each other
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // accelerator.num_processes))
    return accelerator


class MetricsLog:
    """Appends ``{"stage", "run", "step", **metrics}`` JSON lines (main process only) and keeps the last
    row; ``run`` is the output folder's name, which tells apart two runs of one stage (ppo, ppo-noptx)."""

    def __init__(self, path: str | None, stage: str, accelerator: Accelerator, output_dir: str | None = None):
        self.path, self.stage, self.accelerator = path, stage, accelerator
        self.run = Path(output_dir).name if output_dir else stage
        self.last: dict = {}
        self.history: list[dict] = []

    def log(self, step: int, metrics: dict) -> None:
        row = {"stage": self.stage, "run": self.run, "step": step,
               **{k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in metrics.items()}}
        self.last = row
        self.history.append(row)
        if self.path and self.accelerator.is_main_process:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


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


# what a stage writes: a Hugging Face checkpoint (weights, config, tokenizer) and our metadata
CHECKPOINT_NAMES = (r"rlhf\.json|splits\.json|config\.yaml|config\.json|generation_config\.json|"
                    r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
                    r"tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|"
                    r"merges\.txt|tokenizer\.model|chat_template\.(jinja|json)|adapter")


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
def staged_output(config: BaseModel, stage: str, accelerator: Accelerator):
    """Yield ``output_dir.incomplete/``; rename it into place only on success, so an interrupted stage
    never leaves a folder that looks finished. An earlier output of the same stage is replaced;
    anything else already at ``output_dir`` is refused before training starts."""
    target = Path(os.path.abspath(config.output_dir))  # every rank checked it at the start of the stage
    staging, created = target.with_name(target.name + ".incomplete"), []
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        check_stage_output(config, stage)  # again: the folder may have changed while the models loaded
        staging, created = begin_folder(target, stage, earlier_stage_output(stage))
    accelerator.wait_for_everyone()
    try:
        yield staging
    except BaseException:
        if accelerator.is_main_process:
            abandon_folder(staging, created)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not (staging / METADATA_FILE).exists():
            raise RuntimeError(f"{staging}: stage ended without writing {METADATA_FILE}")
        finish_folder(staging, target, stage, earlier_stage_output(stage))
    accelerator.wait_for_everyone()


def save_checkpoint(folder: Path, model, tokenizer, accelerator: Accelerator) -> None:
    """``save_pretrained`` of the unwrapped model (safetensors) and the tokenizer, main process only.
    A LoRA model is saved merged (a plain HF folder) with its adapter in ``adapter/``."""
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped = getattr(unwrapped, "hf", unwrapped)  # ScalarModel → its HF model
        save_adapter(unwrapped, folder)
        merged = merged_copy(unwrapped)
        merged.config.update(dropout_fields(merged.config, 0.0))  # a checkpoint loads without dropout
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)


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


def make_optimizer_and_schedule(params, learning_rate: float, total_steps: int, warmup_ratio: float,
                                min_lr_ratio: float, weight_decay: float = 0.0,
                                betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=int(warmup_ratio * total_steps), num_training_steps=max(total_steps, 1),
        min_lr_rate=min_lr_ratio,
    )
    return optimizer, schedule


def add_residual_dropout(model: torch.nn.Module, p: float) -> list:
    """Dropout on each sublayer's output before it joins the residual stream (GPT's residual
    dropout), hooked onto the attention and MLP output projections. Returns the hook handles."""
    if p <= 0:
        return []
    handles = []
    for name, module in model.named_modules():
        if name.endswith(("self_attn.o_proj", "mlp.down_proj", "attn.c_proj", "mlp.c_proj")):
            handles.append(module.register_forward_hook(
                lambda mod, args, out: torch.nn.functional.dropout(out, p, mod.training)))
    if not handles:
        logger.warning("residual dropout: no known output projections in %s; only attention dropout applies",
                       type(model).__name__)
    return handles


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off in every forward, train mode included — PPO's old log-probs must be what the
    update's forward computes. Every ``nn.Dropout`` gets p = 0 (GPT-2's ``resid_pdrop``,
    ``embd_pdrop``, ``attn_pdrop`` live there), every module's functional rate (Llama-family
    attention keeps ``attention_dropout`` as a float) becomes 0, and so does every dropout field of
    the configs, for anything built from them later."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "dropout_rate"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
                    setattr(config, key, 0.0)
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass (``gradient_checkpointing=true``):
    memory for about a third more compute. HF recomputes only in train mode."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def split_and_encode(config, records: list, encode) -> tuple[list, list, dict[str, list]]:
    """Split records (same split in every stage), sample the training part, and tokenise both.

    ``encode(records, on_too_long)`` → examples. Returns (train, valid, splits)."""
    from rlhf.data.collate import sample_records, split_records

    splits = split_records(records, config.seed, config.valid_fraction, config.test_fraction)
    train = encode(sample_records(splits["train"], config.max_examples, config.seed), config.on_too_long)
    valid = encode(splits["valid"], config.on_too_long) if splits["valid"] else []
    return train, valid, splits


class SupervisedRun:
    """The loop SFT and the reward model share: length-grouped batches, AdamW with cosine decay
    to ``min_lr_ratio`` after warm-up, gradient accumulation and clipping, all through accelerate.

    ``steps(loss_fn)`` runs the epochs and yields after every optimizer step; ``loss_fn(batch)``
    returns (loss, metrics) and runs under autocast.
    """

    def __init__(self, config, accelerator: Accelerator, model, train: list, valid: list, collate, lengths: list[int]):
        from torch.utils.data import DataLoader

        from rlhf.data.collate import LengthGroupedBatches

        self.config, self.accelerator = config, accelerator
        train_loader = DataLoader(train, batch_sampler=LengthGroupedBatches(lengths, config.batch_size, config.seed),
                                  collate_fn=collate)
        valid_loader = DataLoader(valid, batch_size=config.batch_size, collate_fn=collate) if valid else None
        steps_per_epoch = -(-len(train_loader) // (config.grad_accum_steps * accelerator.num_processes))
        self.total_steps = min(config.max_steps or 10**12, steps_per_epoch * config.epochs)
        optimizer, schedule = make_optimizer_and_schedule(
            trainable_parameters(model), config.learning_rate, self.total_steps, config.warmup_ratio,
            config.min_lr_ratio, config.weight_decay)
        self.model, self.optimizer, self.train_loader, self.schedule = accelerator.prepare(
            model, optimizer, train_loader, schedule)
        self.valid_loader = accelerator.prepare(valid_loader) if valid_loader is not None else None
        self.step, self.epoch = 0, 0
        self.throughput = Throughput()

    def steps(self, loss_fn, desc: str, count_items):
        """Yield (loss, metrics) after each optimizer step; ``count_items(batch)`` feeds the throughput."""
        accelerator, model = self.accelerator, self.model
        progress = tqdm(total=self.total_steps, desc=desc, disable=not accelerator.is_local_main_process)
        model.train()
        for self.epoch in range(1, self.config.epochs + 1):
            for batch in self.train_loader:
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss, metrics = loss_fn(batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
                    self.optimizer.step()
                    self.schedule.step()
                    self.optimizer.zero_grad()
                self.throughput.add(count_items(batch) * accelerator.num_processes)
                if accelerator.sync_gradients:
                    self.step += 1
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss.item():.3f}")
                    yield loss.item(), metrics
                if self.step >= self.total_steps:
                    break
            yield None, {"end_of_epoch": self.epoch}
            if self.step >= self.total_steps:
                break
        progress.close()

    @property
    def learning_rate(self) -> float:
        return self.schedule.get_last_lr()[0]


class Throughput:
    """Tokens (or items) per second over a span of work."""

    def __init__(self):
        self.start, self.count = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.count += n

    @property
    def rate(self) -> float:
        return self.count / max(time.perf_counter() - self.start, 1e-9)
