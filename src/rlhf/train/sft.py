"""Stage 1: supervised fine-tuning on prompt → demonstration, loss on response tokens only."""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rlhf.config import SFTConfig
from rlhf.data.collate import LengthGroupedBatches, collate_sft, encode_demonstrations, sample_records, split_records
from rlhf.data.readers import DataError, read_demonstrations
from rlhf.losses import response_lm_loss
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.train.common import (
    MetricsLog, Throughput, add_residual_dropout, make_accelerator, make_optimizer_and_schedule,
    save_checkpoint, staged_output, write_metadata,
)


@torch.no_grad()
def evaluate_lm_loss(model, loader, accelerator) -> float:
    """Token-weighted response loss over a loader (all processes)."""
    model.eval()
    total, tokens = torch.zeros(()), torch.zeros(())
    for batch in loader:
        with accelerator.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        n = batch["loss_mask"][:, 1:].sum()
        total += response_lm_loss(logits, batch["input_ids"], batch["loss_mask"]).float().cpu() * n.cpu()
        tokens += n.cpu()
    total, tokens = accelerator.reduce(total, "sum"), accelerator.reduce(tokens, "sum")
    model.train()
    return float(total / tokens.clamp(min=1))


def train_sft(config: SFTConfig) -> dict:
    if not config.data:
        raise DataError("sft: no demonstration files given (set data=[FILE, ...])")
    started = time.time()
    accelerator = make_accelerator(config, config.grad_accum_steps)
    tokenizer = load_tokenizer(config.model)
    demos = [d for path in config.data for d in read_demonstrations(path, config.skip_invalid)]
    splits = split_records(demos, config.seed, config.valid_fraction, config.test_fraction)
    train = encode_demonstrations(tokenizer, sample_records(splits["train"], config.max_examples, config.seed), config.max_length,
                                  config.on_too_long)
    valid = encode_demonstrations(tokenizer, splits["valid"], config.max_length, config.on_too_long) \
        if splits["valid"] else []
    # length-sorted validation batches waste no padding; training order stays shuffled
    valid.sort(key=lambda e: len(e.input_ids))

    model = load_causal_lm(config.model, dropout=config.dropout)
    model.config.use_cache = False
    add_residual_dropout(model, config.dropout)
    collate = lambda batch: collate_sft(batch, tokenizer.pad_token_id)  # noqa: E731
    batches = LengthGroupedBatches([len(e.input_ids) for e in train], config.batch_size, config.seed)
    train_loader = DataLoader(train, batch_sampler=batches, collate_fn=collate)
    valid_loader = DataLoader(valid, batch_size=config.batch_size, collate_fn=collate) if valid else None
    steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum_steps / accelerator.num_processes)
    total_steps = min(config.max_steps or 10**12, steps_per_epoch * config.epochs)
    optimizer, schedule = make_optimizer_and_schedule(
        model.parameters(), config.learning_rate, total_steps, config.warmup_ratio, config.min_lr_ratio,
        config.weight_decay)
    model, optimizer, train_loader, schedule = accelerator.prepare(model, optimizer, train_loader, schedule)
    if valid_loader is not None:
        valid_loader = accelerator.prepare(valid_loader)

    log = MetricsLog(config.metrics_file, "sft", accelerator)
    best = {"valid/loss": math.inf, "epoch": 0}
    step = 0
    throughput = Throughput()
    progress = tqdm(total=total_steps, desc="sft", disable=not accelerator.is_local_main_process)
    with staged_output(config.output_dir, accelerator) as staging:
        model.train()
        for epoch in range(1, config.epochs + 1):
            for batch in train_loader:
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    loss = response_lm_loss(logits, batch["input_ids"], batch["loss_mask"])
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                throughput.add(int(batch["attention_mask"].sum()) * accelerator.num_processes)
                if accelerator.sync_gradients:
                    step += 1
                    progress.update(1)
                    log.log(step, {"sft/loss": loss.item(), "sft/lr": schedule.get_last_lr()[0],
                                   "sft/tokens_per_s": throughput.rate, "epoch": epoch})
                    progress.set_postfix(loss=f"{loss.item():.3f}")
                if step >= total_steps:
                    break
            valid_loss = evaluate_lm_loss(model, valid_loader, accelerator) if valid_loader else -epoch
            log.log(step, {"sft/valid_loss": valid_loss, "epoch": epoch})
            if valid_loss < best["valid/loss"]:
                best = {"valid/loss": valid_loss, "epoch": epoch}
                save_checkpoint(staging, model, tokenizer, accelerator)
            if step >= total_steps:
                break
        progress.close()
        metrics = {**best, "train/loss": log.last.get("sft/loss"), "steps": step,
                   "tokens_per_s": throughput.rate, "train_examples": len(train), "valid_examples": len(valid)}
        if not valid_loader:
            metrics["valid/loss"] = None
        write_metadata(staging, "sft", config, {f"data[{i}]": p for i, p in enumerate(config.data)},
                       metrics, accelerator, started)
    return metrics
