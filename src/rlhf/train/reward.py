"""Stage 2: the reward model. All K responses of a prompt sit in one batch element and each is
forwarded once; the loss is the mean over the prompt's ordered pairs of −log σ(r_better − r_worse).
After training a bias is stored so the demonstrations score mean 0."""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rlhf.config import RewardConfig
from rlhf.data.collate import (
    LengthGroupedBatches, collate_ranked, collate_sft, encode_comparisons, encode_demonstrations, sample_records, split_records,
)
from rlhf.data.readers import DataError, read_comparisons, read_demonstrations
from rlhf.losses import ranking_loss
from rlhf.models import REWARD_BIAS_KEY, load_scalar_model, load_tokenizer, sequence_scores
from rlhf.train.common import (
    MetricsLog, Throughput, make_accelerator, make_optimizer_and_schedule, save_checkpoint, staged_output,
    write_metadata,
)


def ranked_scores(model, batch: dict) -> torch.Tensor:
    """Forward every response once and lay the scores out per prompt: (B, K_max)."""
    values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    flat_scores = sequence_scores(values, batch["attention_mask"])
    return flat_scores[batch["flat_index"]]


@torch.no_grad()
def evaluate_rankings(model, loader, accelerator) -> dict[str, float]:
    """Pair accuracy and loss over a loader, pair-weighted, gathered over processes."""
    model.eval()
    correct, pairs, loss_sum, prompts = (torch.zeros(()) for _ in range(4))
    for batch in loader:
        with accelerator.autocast():
            scores = ranked_scores(model, batch)
        loss, accuracy = ranking_loss(scores, batch["ranks"], batch["valid"])
        n_pairs = ((batch["ranks"].unsqueeze(2) < batch["ranks"].unsqueeze(1))
                   & batch["valid"].unsqueeze(2) & batch["valid"].unsqueeze(1)).sum().float().cpu()
        correct += accuracy.float().cpu() * n_pairs
        pairs += n_pairs
        loss_sum += loss.float().cpu() * batch["ranks"].shape[0]
        prompts += batch["ranks"].shape[0]
    correct, pairs, loss_sum, prompts = (accelerator.reduce(t, "sum") for t in (correct, pairs, loss_sum, prompts))
    model.train()
    return {"accuracy": float(correct / pairs.clamp(min=1)), "loss": float(loss_sum / prompts.clamp(min=1))}


@torch.no_grad()
def mean_demonstration_score(model, loader, accelerator) -> float:
    model.eval()
    total, count = torch.zeros(()), torch.zeros(())
    for batch in loader:
        with accelerator.autocast():
            values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        scores = sequence_scores(values, batch["attention_mask"])
        total += scores.sum().float().cpu()
        count += scores.numel()
    return float(accelerator.reduce(total, "sum") / accelerator.reduce(count, "sum"))


def train_reward(config: RewardConfig) -> dict:
    if not config.data:
        raise DataError("reward: no comparison files given (set data=[FILE, ...])")
    started = time.time()
    accelerator = make_accelerator(config, config.grad_accum_steps)
    tokenizer = load_tokenizer(config.model)
    comparisons = [c for path in config.data for c in read_comparisons(path, config.skip_invalid)]
    splits = split_records(comparisons, config.seed, config.valid_fraction, config.test_fraction)
    train = encode_comparisons(tokenizer, sample_records(splits["train"], config.max_examples, config.seed), config.max_length,
                               config.on_too_long)
    valid = encode_comparisons(tokenizer, splits["valid"], config.max_length, config.on_too_long) \
        if splits["valid"] else []

    model = load_scalar_model(config.model, tokenizer.pad_token_id)
    collate = lambda batch: collate_ranked(batch, tokenizer.pad_token_id)  # noqa: E731
    batches = LengthGroupedBatches([max(map(len, e.sequences)) for e in train], config.batch_size, config.seed)
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

    log = MetricsLog(config.metrics_file, "reward", accelerator)
    throughput = Throughput()
    step = 0
    progress = tqdm(total=total_steps, desc="reward", disable=not accelerator.is_local_main_process)
    with staged_output(config.output_dir, accelerator) as staging:
        model.train()
        for epoch in range(1, config.epochs + 1):
            for batch in train_loader:
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        scores = ranked_scores(model, batch)
                    loss, accuracy = ranking_loss(scores, batch["ranks"], batch["valid"])
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
                throughput.add(int(batch["ranks"].shape[0]) * accelerator.num_processes)
                if accelerator.sync_gradients:
                    step += 1
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy.item():.2f}")
                    log.log(step, {"reward/loss": loss.item(), "reward/accuracy": accuracy.item(),
                                   "reward/lr": schedule.get_last_lr()[0], "reward/prompts_per_s": throughput.rate})
                if step >= total_steps:
                    break
            if step >= total_steps:
                break
        progress.close()

        metrics = {"steps": step, "train_prompts": len(train), "valid_prompts": len(valid),
                   "prompts_per_s": throughput.rate, "train/loss": log.last.get("reward/loss")}
        if valid_loader is not None:
            evaluation = evaluate_rankings(model, valid_loader, accelerator)
            metrics.update({"valid/accuracy": evaluation["accuracy"], "valid/loss": evaluation["loss"]})
        metrics["bias"] = _normalize(model, tokenizer, config, accelerator)
        log.log(step, {f"reward/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        save_checkpoint(staging, model, tokenizer, accelerator)
        write_metadata(staging, "reward", config,
                       {**{f"data[{i}]": p for i, p in enumerate(config.data)},
                        **{f"normalize_data[{i}]": p for i, p in enumerate(config.normalize_data)}},
                       metrics, accelerator, started)
    return metrics


def _normalize(model, tokenizer, config: RewardConfig, accelerator) -> float:
    """Set the stored bias to −mean score of the demonstrations (the paper's normalisation)."""
    if not config.normalize_data:
        return 0.0
    demos = [d for path in config.normalize_data for d in read_demonstrations(path, config.skip_invalid)]
    demos = sample_records(demos, config.normalize_max_examples, config.seed)
    examples = encode_demonstrations(tokenizer, demos, config.max_length, "skip")
    loader = accelerator.prepare(DataLoader(
        examples, batch_size=config.batch_size * 2, collate_fn=lambda b: collate_sft(b, tokenizer.pad_token_id)))
    bias = -mean_demonstration_score(model, loader, accelerator)
    setattr(accelerator.unwrap_model(model).hf.config, REWARD_BIAS_KEY, bias)
    return bias
