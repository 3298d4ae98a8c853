"""What every stage shares: the accelerator, metrics, checkpoint folders written atomically,
and the optimizer/schedule. Stages are thin loops on top of these."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, set_seed
from pydantic import BaseModel
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from rlhf.checkpoint import Checkpoints, RunControl, StopRequest, every, truncate_file
from rlhf.data.records import DataError
from rlhf.models import dropout_fields
from rlhf.models.lora import trainable_parameters

logger = logging.getLogger(__name__)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 or AMX). Without it (AVX2 only, as on
    many laptops) a bf16 product runs at about 1 GFLOP/s, so "auto" computes in fp32; said once."""
    flags = ""
    if platform.system() == "Linux":
        with contextlib.suppress(OSError):
            flags = Path("/proc/cpuinfo").read_text()
    fast = "avx512_bf16" in flags or "amx_bf16" in flags
    if not fast and not torch.cuda.is_available():
        logger.info("mixed_precision auto: this CPU has no fast bf16 (avx512_bf16 or AMX), so training, "
                    "scoring and sampling run in fp32, with oneDNN-packed weights for sampling")
    return fast


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


def tracking_dir(config) -> str:
    return config.tracking_dir or str(Path(os.path.abspath(config.output_dir)).parent / "tracking")


def make_accelerator(config, gradient_accumulation_steps: int = 1) -> Accelerator:
    """The stage's Accelerator. accelerate keeps one mixed-precision setting per process: the state a
    previous stage of the pipeline left is dropped first (the process group is kept)."""
    AcceleratorState._reset_state()
    log_with = list(getattr(config, "log_with", []) or [])
    fsdp = fsdp2_plugin(config)
    if PartialState._shared_state.get("rlhf_cpu_fsdp"):  # an earlier stage's FSDP on CPU processes: undone
        PartialState().distributed_type, PartialState().rlhf_cpu_fsdp = DistributedType.MULTI_CPU, False
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
        log_with=log_with or None,
        project_dir=tracking_dir(config) if log_with else None,
        # schedules count optimizer steps: accelerate would otherwise step them once per process
        step_scheduler_with_optimizer=False,
        fsdp_plugin=fsdp,
    )
    if fsdp is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate turns FSDP on only for accelerators; FSDP2 itself shards on CPU processes (gloo) as well
        PartialState().distributed_type = DistributedType.FSDP  # both states: accelerate reads each
        PartialState().rlhf_cpu_fsdp = True
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp
        if accelerator.mixed_precision != "no":
            fsdp.set_mixed_precision(accelerator.mixed_precision)
    elif fsdp is not None and accelerator.num_processes == 1:
        logger.info("sharding: fsdp2 on one process shards nothing; training as usual")
    lora = getattr(config, "lora", None)
    if lora is not None and accelerator.is_fsdp2:  # an FSDP config from `accelerate launch`
        from rlhf.config import ConfigError

        raise ConfigError("lora: LoRA under FSDP2 (this accelerate launch's config) is not supported yet; LoRA's "
                          "frozen base is small enough to replicate: launch with a DDP config")
    if lora is not None and lora.base_dtype == "bf16" and accelerator.mixed_precision != "bf16":
        from rlhf.config import ConfigError

        raise ConfigError(f"lora.base_dtype: bf16 needs bf16 mixed precision; mixed_precision "
                          f"{config.mixed_precision!r} resolves to {accelerator.mixed_precision!r} here")
    set_seed(config.seed)
    if torch.get_num_threads() > 1 and accelerator.num_processes > 1 and not torch.cuda.is_available():
        # processes on one CPU must share the cores, or they thrash each other
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // accelerator.num_processes))
    return accelerator


def fsdp2_plugin(config):
    """FSDP2 when the config says ``sharding: fsdp2`` or ``accelerate launch`` ran with an FSDP2 config
    (its environment), else None: each transformer block (the model's ``_no_split_modules``) and the
    root sharded, parameters resharded after the forward; mid-stage checkpoints sharded (each process
    writes its part), the finished model gathered into one plain HF folder."""
    from accelerate import FullyShardedDataParallelPlugin

    from rlhf.config import ConfigError

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise ConfigError("accelerate launch: FSDP version 1 is not supported; set fsdp_version: 2 in the "
                              "accelerate config (examples/accelerate/fsdp2.yaml)")
        return FullyShardedDataParallelPlugin()  # the launcher's settings, from its environment
    if getattr(config, "sharding", "none") != "fsdp2":
        return None
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT")


class MetricsLog:
    """Appends ``{"stage", "run", "step", **metrics}`` JSON lines (main process only) and keeps the last
    row; ``run`` is the output folder's name, which tells apart two runs of one stage (ppo, ppo-noptx)."""

    def __init__(self, path: str | None, stage: str, accelerator: Accelerator, output_dir: str | None = None,
                 config: BaseModel | None = None):
        self.path, self.stage, self.accelerator = path, stage, accelerator
        self.run = Path(output_dir).name if output_dir else stage
        self.last: dict = {}
        self.history: list[dict] = []
        self.tracking = bool(accelerator.log_with)
        if self.tracking:  # accelerate's trackers (TensorBoard, W&B, …): one run per stage run
            hyperparameters = {k: v for k, v in (config.model_dump(mode="json") if config else {}).items()
                               if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers(self.run, config=hyperparameters)

    def state(self) -> dict:
        """What a checkpoint keeps: the rows so far and the file's length when they were written."""
        size = Path(self.path).stat().st_size if self.path and Path(self.path).exists() else 0
        return {"rows": self.history, "bytes": size}

    def restore(self, state: dict) -> None:
        """Back to a checkpoint's rows: rows written after it (before an interruption) are cut from the
        file, so that the resumed run does not log them twice."""
        self.history = list(state.get("rows", []))
        self.last = self.history[-1] if self.history else {}
        if self.accelerator.is_main_process:
            truncate_file(self.path, state.get("bytes", 0))

    def log(self, step: int, metrics: dict) -> None:
        row = {"stage": self.stage, "run": self.run, "step": step,
               **{k: (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in metrics.items()}}
        self.last = row
        self.history.append(row)
        if self.path and self.accelerator.is_main_process:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if self.tracking:
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, float) and k != "step"}, step=step)

    def close(self) -> None:
        """Flush and close the trackers (the end of the stage)."""
        if self.tracking:
            self.accelerator.end_training()


def make_optimizer_and_schedule(params, learning_rate: float, total_steps: int, warmup_ratio: float,
                                min_lr_ratio: float, weight_decay: float = 0.0,
                                betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, fused: bool = False):
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay,
                                  fused=fused or None)
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
            config.update(dropout_fields(config, 0.0))
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass (``gradient_checkpointing=true``):
    memory for about a third more compute. HF recomputes only in train mode."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def split_and_encode(config, records: list, encode, in_full: list = ()) -> tuple[list, list, dict[str, list]]:
    """Split records (same split in every stage), sample the training part, and tokenise both.

    ``encode(records, on_too_long)`` → examples; ``in_full``: more records, split the same way, whose
    training part is used whole rather than sampled. Returns (train, valid, splits); ``splits["trained"]``
    is what was offered to training (what ``disjoint_from`` leaves out)."""
    from rlhf.data.collate import sample_records, split_records

    splits = split_records(records, config.seed, config.valid_fraction, config.test_fraction)
    splits["trained"] = sample_records(splits["train"], config.max_examples, config.seed)
    if in_full:
        extra = split_records(list(in_full), config.seed, config.valid_fraction, config.test_fraction)
        for part in ("train", "valid", "test"):
            splits[part] += extra[part]
        splits["trained"] += extra["train"]
    train = encode(splits["trained"], config.on_too_long)
    valid = encode(splits["valid"], config.on_too_long) if splits["valid"] else []
    return train, valid, splits


def token_micro_batches(examples: list, budget: int | None, shape) -> list[list]:
    """One batch's examples cut into micro-batches of at most ``budget`` padded tokens: Σ rows × the
    longest length, with ``shape(example)`` = (rows, length) (a ranked example is K rows). Longest
    first, so the largest micro-batch comes first; an example over the budget is one on its own.
    No budget: the batch whole."""
    if not budget or len(examples) <= 1:
        return [examples]
    ordered = sorted(examples, key=lambda e: shape(e)[1], reverse=True)
    chunks, current, rows = [], [], 0
    for example in ordered:
        more, length = shape(example)
        if current and (rows + more) * shape(current[0])[1] > budget:
            chunks.append(current)
            current, rows = [], 0
        current.append(example)
        rows += more
    return chunks + [current]


class SupervisedRun:
    """The loop SFT, the reward model and DPO share: length-grouped batches, AdamW with cosine decay
    to ``min_lr_ratio`` after warm-up, gradient accumulation and clipping, all through accelerate.

    Each batch may be cut into micro-batches by a token budget (``micro_batch_tokens``): their losses
    are weighted by ``loss_weight(micro_batch)`` — the count the loss averages over (target tokens,
    prompts) — so the update is the whole batch's. The loss, the metrics and the non-finite check
    stay on the device between logging points (``log_every``): a non-finite gradient norm skips the
    update inside the fused AdamW step (``found_inf``), and the guard counts it at the next flush.

    ``steps(loss_fn)`` runs the epochs and yields at every logging point; ``loss_fn(batch)`` returns
    (loss, metrics as tensors or floats) and runs under autocast.
    """

    def __init__(self, config, accelerator: Accelerator, model, train: list, valid: list, collate, shape,
                 loss_weight, count_items):
        from torch.utils.data import DataLoader

        from rlhf.data.collate import LengthGroupedBatches

        self.config, self.accelerator = config, accelerator
        self.sampler = LengthGroupedBatches([shape(e)[1] for e in train], config.batch_size, config.seed)

        def micro_batches(examples):  # collated on the loader's side: weights and counts taken on the CPU
            return [{**batch, "loss_weight": float(loss_weight(batch)), "items": float(count_items(batch))}
                    for batch in (collate(chunk) for chunk in
                                  token_micro_batches(examples, config.micro_batch_tokens, shape))]

        # each loader draws its iterator's base seed from its own generator, not the global RNG that
        # dropout uses: a resumed epoch must not shift the dropout masks of an uninterrupted run
        train_loader = DataLoader(train, batch_sampler=self.sampler, collate_fn=micro_batches,
                                  generator=torch.Generator().manual_seed(config.seed))
        # validation in order of length: every measure over it is a sum, and sorted batches pad little
        valid_loader = DataLoader(sorted(valid, key=lambda e: shape(e)[1]), batch_size=config.batch_size,
                                  collate_fn=collate,
                                  generator=torch.Generator().manual_seed(config.seed)) if valid else None
        steps_per_epoch = -(-len(train_loader) // (config.grad_accum_steps * accelerator.num_processes))
        self.total_steps = min(config.max_steps or 10**12, steps_per_epoch * config.epochs)
        # fused AdamW takes the skip decision as a tensor (found_inf): no host synchronisation per step;
        # FSDP2's sharded parameters take the plain path and a per-step check
        self.skip_on_device = not accelerator.is_fsdp2
        optimizer, schedule = make_optimizer_and_schedule(
            trainable_parameters(model), config.learning_rate, self.total_steps, config.warmup_ratio,
            config.min_lr_ratio, config.weight_decay, fused=self.skip_on_device)
        if config.compile:
            model.forward = torch.compile(model.forward)
        self.model, self.optimizer, self.train_loader, self.schedule = accelerator.prepare(
            model, optimizer, train_loader, schedule)
        self.valid_loader = accelerator.prepare(valid_loader) if valid_loader is not None else None
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.guard = NonFiniteGuard(config.max_bad_steps, lambda flag: any_process(accelerator, flag))
        self.throughput = Throughput()

    def steps(self, loss_fn, desc: str, checkpoints: Checkpoints | None = None, state_fn=lambda: {}):
        """Yield (loss, metrics) every ``log_every`` optimizer steps — the means over those steps,
        averaged over the processes — and (None, {"end_of_epoch": n}) after each epoch. The
        throughput counts ``count_items`` of each micro-batch (given at construction).

        With ``checkpoints``, the loop resumes from :meth:`resume`'s position and writes a checkpoint
        every ``checkpoint_every`` steps, at each epoch's end and when SIGINT/SIGTERM asks it to stop
        (then raises ``KeyboardInterrupt``), with ``state_fn()`` — the stage's own state — in it.
        A step whose gradient norm is not finite is skipped (:class:`NonFiniteGuard`)."""
        accelerator, model, config = self.accelerator, self.model, self.config
        progress = tqdm(total=self.total_steps, initial=self.step, desc=desc,
                        disable=not accelerator.is_local_main_process)
        due = every(config.checkpoint_every) if checkpoints is not None else (lambda step: False)
        stop, replicas_due, log_due = StopRequest(), every(config.check_replicas_every), every(config.log_every)
        pending: list[tuple[int, torch.Tensor, torch.Tensor | None, dict]] = []  # (step, loss, norm, metrics)

        def flush() -> tuple[float, dict] | None:
            """One host synchronisation for the pending steps: the guard counts (or stops on) their
            non-finite updates, and their mean loss and metrics are reduced over the processes."""
            if not pending:
                return None
            values = torch.stack([torch.stack([loss.float(), loss.new_zeros(()) if norm is None else norm.float()])
                                  for _, loss, norm, _ in pending]).tolist()
            for (step, _, norm, _), (loss, norm_value) in zip(pending, values):
                if norm is not None:  # skipped on the device: counted (or stopped on) here
                    self.guard.check(desc, step, loss=torch.tensor(loss), gradient_norm=torch.tensor(norm_value),
                                     last_checkpoint=checkpoints and checkpoints.last_saved)
            names = list(pending[0][3])
            metrics = torch.stack([torch.stack([torch.as_tensor(m[name], dtype=torch.float32).to(loss_device)
                                                for name in names]) for *_, m in pending]).mean(0).tolist() \
                if names else []
            means = torch.tensor([sum(v[0] for v in values) / len(values), *metrics])
            pending.clear()
            logged = mean_over_processes(accelerator, dict(zip(["loss", *names], means.tolist())))
            return logged.pop("loss"), {**logged, "train/skipped_steps": self.guard.skipped}

        def save(position_epoch: int, batches_done: int):
            checkpoints.save(self.step, {"epoch": position_epoch, "batches_done": batches_done,
                                         "total_steps": self.total_steps, "guard": self.guard.state(),
                                         **state_fn()})

        model.train()
        step_loss, step_metrics, step_batches = None, {}, 0
        loss_device = accelerator.device
        with stop.installed():
            for self.epoch in range(self.epoch or 1, config.epochs + 1):
                self.sampler.set_epoch(self.epoch - 1)  # 0-based, as accelerate counts: its loader does the same
                self.train_loader.set_epoch(self.epoch - 1)  # (one process; with several it cannot reach ours)
                loader = self.train_loader
                if self.batches_done:  # resumed inside this epoch: its first batches are trained already
                    loader = accelerator.skip_first_batches(loader, self.batches_done)
                for micro_batches in loader:
                    with accelerator.accumulate(model):
                        loss, metrics = self._forward_backward(loss_fn, micro_batches)
                        step_batches += 1  # the step's loss: the mean over its batches (a short last one too)
                        step_loss = loss if step_loss is None else step_loss + loss
                        for name, value in metrics.items():
                            step_metrics[name] = step_metrics.get(name, 0.0) + value
                        if accelerator.sync_gradients:
                            norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                            if self.skip_on_device:  # the fused step leaves weights and moments as they were
                                self.optimizer.optimizer.found_inf = (~torch.isfinite(norm)).float()
                                self.optimizer.step()
                            elif self.guard.check(desc, self.step + 1, loss=loss, gradient_norm=norm,
                                                  last_checkpoint=checkpoints and checkpoints.last_saved):
                                self.optimizer.step()
                            self.schedule.step()  # one schedule step per optimizer step, any world size
                        self.optimizer.zero_grad()
                    self.batches_done += 1
                    self.throughput.add(sum(b["items"] for b in micro_batches) * accelerator.num_processes)
                    if accelerator.sync_gradients:
                        self.step += 1
                        progress.update(1)
                        pending.append((self.step, step_loss / step_batches,
                                        norm.detach() if self.skip_on_device else None,  # None: checked already
                                        {name: value / step_batches for name, value in step_metrics.items()}))
                        step_loss, step_metrics, step_batches = None, {}, 0
                        # several processes agree on a stop signal at logging and checkpoint points only (a
                        # collective); one process reads its own flag every step
                        boundary = log_due(self.step) or due(self.step) or self.step >= self.total_steps
                        stopping = any_process(accelerator, stop.requested) \
                            if boundary or accelerator.num_processes == 1 else False
                        saving = checkpoints is not None and (due(self.step) or stopping)
                        if boundary or saving:
                            loss_value, logged = flush()
                            progress.set_postfix(loss=f"{loss_value:.3f}")
                            yield loss_value, logged
                        if replicas_due(self.step):
                            check_replicas(accelerator, desc, self.step, {"model": model})
                        if saving:
                            save(self.epoch, self.batches_done)
                        if stopping:
                            raise KeyboardInterrupt
                    if self.step >= self.total_steps:
                        break
                self.batches_done = 0
                flushed = flush()  # an epoch's last steps are logged before its evaluation
                if flushed is not None:
                    yield flushed
                yield None, {"end_of_epoch": self.epoch}
                if self.step >= self.total_steps:
                    break
                stopping = any_process(accelerator, stop.requested)
                if checkpoints is not None and (config.checkpoint_every or stopping):
                    save(self.epoch + 1, 0)  # the next epoch, from its start
                if stopping:
                    raise KeyboardInterrupt
        progress.close()

    def _forward_backward(self, loss_fn, micro_batches: list[dict]) -> tuple[torch.Tensor, dict]:
        """Forward and backward each micro-batch of one batch, its loss weighted by its share of the
        batch's ``loss_weight``: the gradients (and the loss returned) are the whole batch's. Gradients
        are synchronised across processes on the last micro-batch only."""
        accelerator, model = self.accelerator, self.model
        total = sum(batch["loss_weight"] for batch in micro_batches)
        batch_loss, batch_metrics = None, {}
        for index, batch in enumerate(micro_batches):
            share = batch["loss_weight"] / total if total else 1.0 / len(micro_batches)
            # no_sync on all but the last micro-batch of a synchronising step (within a step that does not
            # synchronise, accumulate() holds it already: a nested one would switch FSDP2's sync back on)
            holding = accelerator.sync_gradients and index < len(micro_batches) - 1
            with accelerator.no_sync(model) if holding else contextlib.nullcontext():
                with accelerator.autocast():
                    loss, metrics = loss_fn(batch)
                accelerator.backward(loss if len(micro_batches) == 1 else loss * share)
            loss = loss.detach() * share
            batch_loss = loss if batch_loss is None else batch_loss + loss
            for name, value in metrics.items():
                value = value.detach() if isinstance(value, torch.Tensor) else value
                batch_metrics[name] = batch_metrics.get(name, 0.0) + value * share
        return batch_loss, batch_metrics

    def resume(self, checkpoints: Checkpoints, control: RunControl, log: MetricsLog) -> dict | None:
        """Load the newest checkpoint (models, optimizer, schedule, RNGs, the metrics so far) and take up
        its position; the stage's own state is returned, or ``None`` when there is nothing to resume."""
        state = checkpoints.resume(control, log)
        if state is not None:
            self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]
            self.guard.restore(state.get("guard", {}))
        return state

    @property
    def learning_rate(self) -> float:
        return self.schedule.get_last_lr()[0]


# ---- data parallelism: what every process must agree on ---------------------------------
def sum_over_processes(accelerator: Accelerator):
    """A reduce for :mod:`rlhf.losses`: sums a tensor over every process (the identity on one)."""
    if accelerator.num_processes == 1:
        return lambda tensor: tensor
    return lambda tensor: accelerator.reduce(tensor, "sum")


def mean_over_processes(accelerator: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the processes, in one collective: what every process logs and acts on
    (the health monitor, β) is the same number everywhere."""
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    names = list(metrics)
    values = torch.tensor([float(metrics[name]) for name in names], dtype=torch.float64, device=accelerator.device)
    return dict(zip(names, accelerator.reduce(values, "mean").tolist()))


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when it is true on one (a NaN, a stop signal): all take the same branch,
    or the next collective waits forever."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


class ReplicasDiverged(DataError):
    """Processes that should hold identical weights do not: one line, exit status 2."""


def check_replicas(accelerator: Accelerator, stage: str, step: int, models: dict) -> None:
    """Every process holds the same weights: each one's digest (Σw and Σw² of every parameter, in
    float64) gathered and compared with process 0's, bit for bit. Raises :class:`ReplicasDiverged`
    on every process, naming the step, the processes and the model."""
    if accelerator.num_processes == 1 or accelerator.is_fsdp2:  # sharded weights are not replicas
        return
    for name, model in models.items():
        digest = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                              for p in model.parameters()]).flatten()
        gathered = accelerator.gather(digest.unsqueeze(0).to(accelerator.device))
        apart = [rank for rank in range(1, gathered.shape[0]) if not torch.equal(gathered[rank], gathered[0])]
        if apart:
            raise ReplicasDiverged(
                f"{stage}: step {step}: the {name} weights on process{'es' if len(apart) > 1 else ''} "
                f"{', '.join(map(str, apart))} differ from process 0's (check_replicas_every); the processes "
                "are no longer one data-parallel run: check that each runs the same code and config")


class TrainingDiverged(DataError):
    """Too many updates in a row with a non-finite loss or gradient: one line, exit status 2."""


class NonFiniteGuard:
    """Skips an update whose loss, gradient norm or logits are not finite (NaN/inf: the weights stay
    as they were) and counts it (``train/skipped_steps``); ``max_bad_steps`` in a row stop the stage
    with one line naming the stage, step, tensor and the last good checkpoint."""

    def __init__(self, max_bad_steps: int, any_process=lambda flag: flag):
        self.max_bad_steps, self.skipped, self.in_a_row = max_bad_steps, 0, 0
        self.any_process = any_process  # every process skips when one sees a non-finite value

    def check(self, stage: str, step: int, last_checkpoint=None, **tensors) -> bool:
        """True when every tensor is finite on every process (the update may go on)."""
        bad = [name for name, value in tensors.items()
               if value is not None and not bool(torch.isfinite(torch.as_tensor(value).detach().float()).all())]
        if not self.any_process(bool(bad)):
            self.in_a_row = 0
            return True
        bad = bad or ["a value on another process"]
        self.skipped += 1
        self.in_a_row += 1
        logger.warning("%s: step %d skipped: %s not finite (%d skipped so far)", stage, step, ", ".join(bad),
                       self.skipped)
        if self.in_a_row >= self.max_bad_steps:
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else \
                "no checkpoint was written (set checkpoint_every)"
            raise TrainingDiverged(f"{stage}: step {step}: {', '.join(bad)} not finite in {self.in_a_row} updates "
                                   f"in a row (max_bad_steps); {where}; try a lower learning rate or "
                                   "mixed_precision=fp32")
        return False

    def state(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def restore(self, state: dict) -> None:
        self.skipped, self.in_a_row = state.get("skipped", 0), state.get("in_a_row", 0)


class Throughput:
    """Tokens (or items) per second over a span of work."""

    def __init__(self):
        self.start, self.count = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.count += n

    @property
    def rate(self) -> float:
        return self.count / max(time.perf_counter() - self.start, 1e-9)
