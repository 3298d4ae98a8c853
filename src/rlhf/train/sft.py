"""Stage 1: supervised fine-tuning on prompt → demonstration, loss on response tokens only."""

from __future__ import annotations

import math
import time

import torch

from rlhf.checkpoint import Checkpoints, RunControl, check_stage_output, save_checkpoint, staged_output, write_metadata
from rlhf.config import SFTConfig
from rlhf.data.collate import collate_sft, encode_demonstrations
from rlhf.data.readers import DataError, read_demonstrations
from rlhf.models import ResponseLM, load_causal_lm, load_tokenizer, train_top_layers, training_attention
from rlhf.models.lora import add_lora
from rlhf.train.common import (
    MetricsLog,
    SupervisedRun,
    add_residual_dropout,
    enable_activation_checkpointing,
    make_accelerator,
    split_and_encode,
)


def target_tokens(batch: dict) -> torch.Tensor:
    """What :func:`sft_loss` averages over: the tokens predicted (``loss_mask`` past position 0)."""
    return batch["loss_mask"][:, 1:].sum()


def sft_loss(model, batch: dict) -> torch.Tensor:
    """``model`` is a :class:`ResponseLM` (possibly DDP-wrapped): its forward is the loss."""
    return model(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])


@torch.no_grad()
def evaluate_lm_loss(model, loader, accelerator) -> float:
    """Token-weighted response loss over a loader (all processes)."""
    model.eval()
    total, tokens = torch.zeros(()), torch.zeros(())
    for batch in loader:
        with accelerator.autocast():
            loss = sft_loss(model, batch)
        n = batch["loss_mask"][:, 1:].sum().cpu()
        total += loss.float().cpu() * n
        tokens += n
    total, tokens = accelerator.reduce(total, "sum"), accelerator.reduce(tokens, "sum")
    model.train()
    return float(total / tokens.clamp(min=1))


def train_sft(config: SFTConfig, control: RunControl = RunControl()) -> dict:
    if not config.data:
        raise DataError("sft: no demonstration files given (set data=[FILE, ...])")
    started = time.time()
    check_stage_output(config, "sft")  # before any loading: a refused output_dir costs nothing
    accelerator = make_accelerator(config, config.grad_accum_steps)
    tokenizer = load_tokenizer(config.model, config.chat_template)
    demos = [d for path in config.data for d in read_demonstrations(path, config.skip_invalid)]
    train, valid, splits = split_and_encode(
        config, demos, lambda records, on_too_long: encode_demonstrations(tokenizer, records, config.max_length,
                                                                          on_too_long))
    valid.sort(key=lambda e: len(e.input_ids))  # length-sorted validation batches waste little padding

    model = load_causal_lm(config.model, dropout=config.dropout, tokenizer=tokenizer,
                           attn_implementation=training_attention(config.attn_implementation, config.max_length,
                                                                  accelerator.device))
    model.config.use_cache = False
    if config.lora:
        add_lora(model, config.lora)
    if config.train_layers:
        train_top_layers(model, config.train_layers)
    add_residual_dropout(model, config.dropout)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model = ResponseLM(model)
    run = SupervisedRun(config, accelerator, model, train, valid, lambda b: collate_sft(b, tokenizer.pad_token_id),
                        shape=lambda e: (1, len(e.input_ids)), loss_weight=target_tokens,
                        count_items=lambda batch: batch["attention_mask"].sum())
    log = MetricsLog(config.metrics_file, "sft", accelerator, config.output_dir, config)
    best = {"valid/loss": math.inf, "epoch": 0}
    last_loss = None
    with staged_output(config, "sft", accelerator, control) as staging:
        checkpoints = Checkpoints(staging, "sft", accelerator, config, config.keep_checkpoints)
        resumed = run.resume(checkpoints, control, log)
        if resumed is not None:
            best, last_loss = resumed["best"], resumed["last_loss"]
        steps = run.steps(lambda batch: (sft_loss(run.model, batch), {}), "sft", checkpoints,
                          lambda: {"best": best, "last_loss": last_loss, "metrics": log.state()})
        for loss, step_metrics in steps:
            if loss is not None:
                last_loss = loss
                log.log(run.step, {"sft/loss": loss, "sft/lr": run.learning_rate,
                                   "sft/tokens_per_s": run.throughput.rate, "epoch": run.epoch,
                                   "train/skipped_steps": step_metrics["train/skipped_steps"]})
                continue
            # end of an epoch: keep the checkpoint with the best validation loss (the last one without)
            valid_loss = evaluate_lm_loss(run.model, run.valid_loader, accelerator) if run.valid_loader else None
            log.log(run.step, {"sft/valid_loss": valid_loss, "epoch": run.epoch})
            if valid_loss is None or valid_loss < best["valid/loss"]:
                best = {"valid/loss": valid_loss if valid_loss is not None else math.inf, "epoch": run.epoch}
                save_checkpoint(staging, run.model, tokenizer, accelerator)
        metrics = {**best, "train/loss": last_loss, "steps": run.step,
                   "tokens_per_s": run.throughput.rate, "train_examples": len(train), "valid_examples": len(valid)}
        if run.valid_loader is None:
            metrics["valid/loss"] = None
        write_metadata(staging, "sft", config, {f"data[{i}]": p for i, p in enumerate(config.data)},
                       metrics, accelerator, started, splits)
    log.close()
    return metrics
