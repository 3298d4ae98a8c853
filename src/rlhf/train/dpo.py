"""Direct preference optimisation (Rafailov et al. 2023) from the SFT model, on the comparisons the
reward model learns from: no reward model, no sampling. K-way rankings give all their ordered pairs,
and each prompt and each response is forwarded once, in the reward model's layout (the prompt, then its
K responses, in one row; :func:`rlhf.losses.dpo_loss`). The
reference log-probs are computed once, before training, by the model itself: at step 0 every
implicit reward is 0 and the loss is log 2."""

from __future__ import annotations

import time

import torch

from rlhf.checkpoint import RunControl, check_stage_output, save_checkpoint, staged_output, write_metadata
from rlhf.config import DPOConfig
from rlhf.data.collate import RankedExample, encode_comparisons
from rlhf.data.readers import DataError, read_comparisons
from rlhf.losses import dpo_loss
from rlhf.models import SequenceLogProbs, load_causal_lm, load_tokenizer, train_top_layers, training_attention
from rlhf.models.lora import add_lora
from rlhf.train.common import (
    MetricsLog,
    SupervisedRun,
    enable_activation_checkpointing,
    make_accelerator,
    split_and_encode,
)
from rlhf.train.reward import ranked_prompts, shared_prompt_collate, train_on_rankings

LOGPROB_INPUTS = ("loss_mask", "position_ids", "label_source", "label_slot")  # what either layout adds


def response_logps(model: SequenceLogProbs, batch: dict) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) of each response, laid out per prompt: (B, K_max). Either layout of
    the reward model's collate: one row per response, or each prompt forwarded once."""
    inputs = {name: batch[name] for name in LOGPROB_INPUTS if name in batch}
    return model(batch["input_ids"], batch["attention_mask"], **inputs)[batch["flat_index"]]


@torch.no_grad()
def add_reference_logps(model: SequenceLogProbs, examples: list[RankedExample], collate, batch_size: int,
                        accelerator) -> None:
    """Fill each example's ``reference_logps`` with Σ log π_ref(y_k | x) of its responses, from ``model``
    as it is now (the reference), in eval mode and under the stage's autocast."""
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {name: tensor.to(accelerator.device) for name, tensor in collate(chunk).items()}
        with accelerator.autocast():
            logps = response_logps(model, batch).float().cpu()
        for b, example in enumerate(chunk):
            example.reference_logps = logps[b, :len(example.sequences)].tolist()


def implicit_rewards(model, batch: dict, beta: float) -> torch.Tensor:
    """r(x, y_k) = β·(log π(y_k|x) − log π_ref(y_k|x)) laid out per prompt: (B, K_max)."""
    reference = batch["reference_logps"].float()[batch["flat_index"]]
    return beta * (response_logps(model, batch).float() - reference)


def train_dpo(config: DPOConfig, control: RunControl = RunControl()) -> dict:
    if not config.data:
        raise DataError("dpo: no comparison files given (set data=[FILE, ...])")
    started = time.time()
    check_stage_output(config, "dpo")  # before any loading: a refused output_dir costs nothing
    accelerator = make_accelerator(config, config.grad_accum_steps)
    tokenizer = load_tokenizer(config.model, config.chat_template)
    comparisons = [c for path in config.data for c in read_comparisons(path, config.skip_invalid)]
    train, valid, splits = split_and_encode(
        config, comparisons, lambda records, on_too_long: encode_comparisons(tokenizer, records, config.max_length,
                                                                             on_too_long))
    hf = load_causal_lm(config.model, dropout=0.0, tokenizer=tokenizer,  # no dropout: the reference has none
                        attn_implementation=training_attention(config.attn_implementation, config.max_length,
                                                               accelerator.device))
    hf.config.use_cache = False
    reference = SequenceLogProbs(hf).to(accelerator.device)
    collate, shape = shared_prompt_collate(hf, tokenizer.pad_token_id, config.max_length)  # each prompt once
    add_reference_logps(reference, train + valid, collate, config.batch_size, accelerator)
    if config.lora:
        add_lora(hf, config.lora)
    if config.train_layers:
        train_top_layers(hf, config.train_layers)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(hf)
    run = SupervisedRun(config, accelerator, SequenceLogProbs(hf), train, valid, collate, shape=shape,
                        loss_weight=ranked_prompts, count_items=ranked_prompts)
    log = MetricsLog(config.metrics_file, "dpo", accelerator, config.output_dir, config)

    def loss_fn(batch):
        reference = batch["reference_logps"][batch["flat_index"]]
        loss, accuracy = dpo_loss(response_logps(run.model, batch), reference, batch["ranks"], batch["valid"],
                                  config.beta)
        return loss, {"dpo/accuracy": accuracy}

    with staged_output(config, "dpo", accelerator, control) as staging:
        metrics = train_on_rankings(run, "dpo", loss_fn,
                                    lambda model, batch: implicit_rewards(model, batch, config.beta),
                                    log, staging, control, len(train), len(valid))
        log.log(run.step, {f"dpo/{k}": v for k, v in metrics.items() if isinstance(v, float)})
        save_checkpoint(staging, run.model, tokenizer, accelerator)
        write_metadata(staging, "dpo", config, {f"data[{i}]": p for i, p in enumerate(config.data)}, metrics,
                       accelerator, started, splits)
    log.close()
    return metrics
