"""Stage 2: the reward model. All K responses of a prompt sit in one batch element and each is
forwarded once; the loss is the mean over the prompt's ordered pairs of −log σ(r_better − r_worse).
After training a bias is stored so the demonstrations score mean 0."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from rlhf.checkpoint import Checkpoints, RunControl, check_stage_output, save_checkpoint, staged_output, write_metadata
from rlhf.config import RewardConfig
from rlhf.data.collate import (
    collate_ranked,
    collate_sft,
    collate_shared_prompt,
    encode_comparisons,
    encode_demonstrations,
    sample_records,
    shared_prompt_shape,
)
from rlhf.data.readers import DataError, read_comparisons, read_demonstrations
from rlhf.losses import ranking_loss
from rlhf.models import (
    REWARD_BIAS_KEY,
    load_scalar_model,
    load_tokenizer,
    sequence_scores,
    train_top_layers,
    training_attention,
)
from rlhf.models.lora import add_lora
from rlhf.train.common import (
    MetricsLog,
    SupervisedRun,
    enable_activation_checkpointing,
    make_accelerator,
    split_and_encode,
)

logger = logging.getLogger(__name__)


def ranked_shape(example) -> tuple[int, int]:
    """A ranked example in a batch: K rows of at most its longest response's length."""
    return len(example.sequences), max(map(len, example.sequences))


def ranked_prompts(batch: dict) -> int:
    """What the ranking loss averages over: the prompts of a batch."""
    return batch["ranks"].shape[0]


def sliding_window(config) -> int | None:
    """The attention window of a model that limits it (Mistral, Gemma-2's local layers), else None."""
    window = getattr(config, "sliding_window", None)
    return window if window and getattr(config, "use_sliding_window", True) is not False else None


def shared_prompt_collate(hf_model, pad_id: int, max_length: int):
    """The reward model's collate: each prompt forwarded once (:func:`collate_shared_prompt`) where the
    attention takes a custom mask (sdpa, eager) and no sliding window shorter than ``max_length`` would
    have cut a sequence's attention (the mask carries none), else every response with its own copy of
    the prompt (flash-attention kernels take no mask). Returns (collate, shape)."""
    implementation = getattr(hf_model.config, "_attn_implementation", None)
    window = sliding_window(hf_model.config)
    if implementation not in ("sdpa", "eager") or (window is not None and window < max_length):
        return (lambda b: collate_ranked(b, pad_id)), ranked_shape
    additive = implementation == "eager"
    return (lambda b: collate_shared_prompt(b, pad_id, additive)), shared_prompt_shape


def ranked_scores(model, batch: dict) -> torch.Tensor:
    """Forward every response once and lay the scores out per prompt: (B, K_max)."""
    if "score_index" in batch:  # the shared-prompt layout: each response's score at its last token
        values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"])
        return values.flatten()[batch["score_index"]]
    values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    flat_scores = sequence_scores(values, batch["attention_mask"])
    return flat_scores[batch["flat_index"]]


@torch.no_grad()
def evaluate_rankings(model, loader, accelerator, scores_fn=ranked_scores) -> dict[str, float]:
    """Pair accuracy and loss over a loader, pair-weighted, gathered over processes; ``scores_fn(model,
    batch)`` gives the (B, K) scores ranked (the reward model's; DPO's implicit rewards)."""
    model.eval()
    correct, pairs, loss_sum, prompts = (torch.zeros(()) for _ in range(4))
    for batch in loader:
        with accelerator.autocast():
            scores = scores_fn(model, batch)
        loss, accuracy = ranking_loss(scores, batch["ranks"], batch["valid"])
        n_pairs = ((batch["ranks"].unsqueeze(2) < batch["ranks"].unsqueeze(1))
                   & batch["valid"].unsqueeze(2) & batch["valid"].unsqueeze(1)).sum().float().cpu()
        correct += accuracy.float().cpu() * n_pairs
        pairs += n_pairs
        loss_sum += loss.float().cpu() * batch["ranks"].shape[0]
        prompts += batch["ranks"].shape[0]
    correct, pairs, loss_sum, prompts = (accelerator.reduce(t, "sum") for t in (correct, pairs, loss_sum, prompts))
    model.train()
    return {"accuracy": float(correct / pairs.clamp(min=1)), "loss": float(loss_sum / prompts.clamp(min=1)),
            "pairs": int(pairs)}


def train_on_rankings(run: SupervisedRun, stage: str, loss_fn, scores_fn, log: MetricsLog, staging, control,
                      train_count: int, valid_count: int) -> dict:
    """The loop the reward model and DPO share: resume, train with ``loss_fn`` (logging
    ``STAGE/loss``, ``/lr``, ``/prompts_per_s``), then pair accuracy and loss on the validation
    prompts under ``scores_fn``. Returns the stage's summary metrics."""
    checkpoints = Checkpoints(staging, stage, run.accelerator, run.config, run.config.keep_checkpoints)
    run.resume(checkpoints, control, log)
    for loss, metrics in run.steps(loss_fn, stage, checkpoints, lambda: {"metrics": log.state()}):
        if loss is not None:
            log.log(run.step, {f"{stage}/loss": loss, **metrics, f"{stage}/lr": run.learning_rate,
                               f"{stage}/prompts_per_s": run.throughput.rate})
    summary = {"steps": run.step, "train_prompts": train_count, "valid_prompts": valid_count,
               "prompts_per_s": run.throughput.rate, "train/loss": log.last.get(f"{stage}/loss")}
    if run.valid_loader is not None:
        evaluation = evaluate_rankings(run.model, run.valid_loader, run.accelerator, scores_fn)
        summary.update({"valid/accuracy": evaluation["accuracy"], "valid/loss": evaluation["loss"]})
    return summary


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


def train_reward(config: RewardConfig, control: RunControl = RunControl()) -> dict:
    if not config.data:
        raise DataError("reward: no comparison files given (set data=[FILE, ...])")
    started = time.time()
    check_stage_output(config, "reward")  # before any loading: a refused output_dir costs nothing
    accelerator = make_accelerator(config, config.grad_accum_steps)
    tokenizer = load_tokenizer(config.model, config.chat_template)
    comparisons = [c for path in config.data for c in read_comparisons(path, config.skip_invalid)]
    in_full = [c for path in config.full_data for c in read_comparisons(path, config.skip_invalid)]
    if config.disjoint_from:
        comparisons = leave_out_trained(comparisons, config.disjoint_from)
        in_full = leave_out_trained(in_full, config.disjoint_from, field="full_data")
    train, valid, splits = split_and_encode(
        config, comparisons, lambda records, on_too_long: encode_comparisons(tokenizer, records, config.max_length,
                                                                             on_too_long), in_full)
    model = load_scalar_model(config.model, tokenizer, attn_implementation=training_attention(
        config.attn_implementation, config.max_length, accelerator.device))
    if config.lora:
        add_lora(model.hf, config.lora, scalar_head=True)
    if config.train_layers:
        train_top_layers(model.hf, config.train_layers)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.hf)
    collate, shape = shared_prompt_collate(model.hf, tokenizer.pad_token_id, config.max_length)
    run = SupervisedRun(config, accelerator, model, train, valid, collate, shape=shape, loss_weight=ranked_prompts,
                        count_items=ranked_prompts)
    log = MetricsLog(config.metrics_file, "reward", accelerator, config.output_dir, config)

    def loss_fn(batch):
        loss, accuracy = ranking_loss(ranked_scores(run.model, batch), batch["ranks"], batch["valid"])
        return loss, {"reward/accuracy": accuracy}

    with staged_output(config, "reward", accelerator, control) as staging:
        metrics = train_on_rankings(run, "reward", loss_fn, ranked_scores, log, staging, control,
                                    len(train), len(valid))
        metrics["bias"] = _normalize(run.model, tokenizer, config, accelerator)
        log.log(run.step, {f"reward/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        save_checkpoint(staging, run.model, tokenizer, accelerator)
        write_metadata(staging, "reward", config,
                       {**{f"data[{i}]": p for i, p in enumerate(config.data)},
                        **{f"full_data[{i}]": p for i, p in enumerate(config.full_data)},
                        **{f"normalize_data[{i}]": p for i, p in enumerate(config.normalize_data)}},
                       metrics, accelerator, started, splits)
    log.close()
    return metrics


def record_key(source: str) -> tuple[str, str]:
    """``file:line`` → (the file's resolved path, line): the same record however its path was written."""
    path, _, line = source.rpartition(":")
    return str(Path(path).resolve()), line


def leave_out_trained(comparisons: list, folder: str, field: str = "data") -> list:
    """The comparisons the reward model in ``folder`` did not train on (its ``splits.json``, "trained").
    Only ``data`` must keep some: ``full_data`` may be all left out (the other model's own extra files)."""
    splits_file = Path(folder) / "splits.json"
    try:
        trained = json.loads(splits_file.read_text(encoding="utf-8"))["trained"]
    except FileNotFoundError:
        raise DataError(f"{splits_file}: disjoint_from: no such file; it must name a finished reward-model "
                        "folder of rlhf") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{splits_file}: disjoint_from: no 'trained' list of records (a stage older than "
                        "this rlhf, or not one of ours); retrain that reward model") from None
    seen = {record_key(source) for source in trained}
    kept = [c for c in comparisons if record_key(c.source) not in seen]
    if not kept and field == "data":
        raise DataError(f"{splits_file}: disjoint_from: that reward model trained on every comparison given; "
                        "train it on a sample (reward.max_examples) and leave the rest to this one")
    logger.info("disjoint_from %s: left out %d comparisons of %s it trained on, %d remain",
                folder, len(comparisons) - len(kept), field, len(kept))
    return kept


def _normalize(model, tokenizer, config: RewardConfig, accelerator) -> float:
    """Set the stored bias to −mean score of the demonstrations (the paper's normalisation)."""
    if not config.normalize_data:
        return 0.0
    demos = [d for path in config.normalize_data for d in read_demonstrations(path, config.skip_invalid)]
    demos = sample_records(demos, config.normalize_max_examples, config.seed)
    examples = sorted(encode_demonstrations(tokenizer, demos, config.max_length, "skip"),
                      key=lambda e: len(e.input_ids))  # batches of like lengths pad little
    loader = accelerator.prepare(DataLoader(
        examples, batch_size=config.batch_size * 2, collate_fn=lambda b: collate_sft(b, tokenizer.pad_token_id)))
    unwrapped = accelerator.unwrap_model(model)
    bias = unwrapped.reward_bias - mean_demonstration_score(model, loader, accelerator)  # scores include the old one
    setattr(unwrapped.hf.config, REWARD_BIAS_KEY, bias)
    return bias
