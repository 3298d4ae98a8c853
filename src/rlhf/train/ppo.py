"""Stage 3: PPO-ptx against the reward model.

One step, readable top to bottom in :meth:`PPOTrainer.step`: the rollout engine
(:class:`rlhf.rollout.RolloutEngine`) samples and scores → per-token KL reward → GAE → clipped
policy/value updates mixed with the pretraining loss → record. This module keeps the optimisation.
Policy and reference start from SFT, the value model from the (normalised) reward model;
every model runs with dropout off, so at the first minibatch the ratio is exactly 1.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from rlhf.checkpoint import (
    SNAPSHOTS,
    Checkpoints,
    RunControl,
    StopRequest,
    check_stage_output,
    every,
    save_checkpoint,
    staged_output,
    write_metadata,
)
from rlhf.config import ConfigError, PPOConfig, ppo_batching_problem
from rlhf.data.collate import PromptSampler, encode_prompts, pack_text, sample_records, split_records
from rlhf.data.readers import DataError, read_prompts, read_text
from rlhf.eval.perplexity import split_text
from rlhf.losses import (
    adaptive_kl_coef,
    explained_variance,
    gae_advantages,
    kl_penalized_rewards,
    length_regressed_scores,
    masked_mean,
    ppo_policy_loss,
    ppo_ptx_loss,
    ppo_value_loss,
    response_lm_loss,
    rloo_advantages,
    whiten,
)
from rlhf.models import (
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    same_tokenizer,
    train_top_layers,
    training_attention,
    zero_head_weights,
)
from rlhf.models.lora import WithoutAdapters, add_lora, trainable_parameters
from rlhf.rollout import (
    RolloutBatch,
    RolloutEngine,
    grouping_overhead,
    response_logprobs,
    response_values,
    row_groups,
)
from rlhf.train.common import (
    MetricsLog,
    NonFiniteGuard,
    any_process,
    check_replicas,
    disable_dropout,
    enable_activation_checkpointing,
    make_accelerator,
    mean_over_processes,
    sum_over_processes,
)
from rlhf.train.health import HealthMonitor, repeated_ngram_fraction

logger = logging.getLogger(__name__)


def freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model


def check_batching(config: PPOConfig, world_size: int) -> None:
    """PPO's batch settings on ``world_size`` processes (:func:`rlhf.config.ppo_batching_problem`):
    a :class:`ConfigError` naming the fields and the number of processes."""
    problem = ppo_batching_problem(config.rollout_batch_size, config.num_minibatches, world_size, "ppo.",
                                   config.group_size)
    if problem:
        raise ConfigError(problem)
    if config.ptx_coef > 0 and config.ptx_batch_size % world_size:
        raise ConfigError(f"ppo.ptx_batch_size ({config.ptx_batch_size}) must be divisible by the number of "
                          f"processes ({world_size}): each takes its share of every pretraining batch")


class PolicyAndValue(torch.nn.Module):
    """The two trained models as one module, for FSDP2 (accelerate shards one model per ``prepare``):
    each transformer block, the policy and the value model are shards of their own, so that each is
    called directly — there is no forward of this container."""

    def __init__(self, policy, value):
        super().__init__()
        self.policy, self.value = policy, value

    @property
    def _no_split_modules(self):
        blocks = list(self.policy._no_split_modules or []) + list(self.value._no_split_modules or [])
        return list(dict.fromkeys(blocks + [type(self.policy).__name__, type(self.value).__name__]))


def encode_train_prompts(tokenizer, config: PPOConfig, files: list[list], train_records: list
                         ) -> tuple[list[tuple[list[int], list]], list[int]]:
    """The training prompts that fit, in their files' order, and how many of them each prompt file
    gave (one count of all without ``prompt_weights``). With weights, a file that gives none is an
    error: its weight could never be drawn."""
    if config.prompt_weights is None:
        encoded = encode_prompts(tokenizer, train_records, config.max_prompt_length, config.on_too_long)
        return encoded, [len(encoded)]
    origin = {id(record): i for i, file in enumerate(files) for record in file}
    encoded, sizes = [], []
    for i, path in enumerate(config.prompts):
        mine = [record for record in train_records if origin[id(record)] == i]
        if not mine:
            raise DataError(f"ppo: prompt_weights[{i}]: {path} has no training prompts (each one is in the "
                            "valid or test split, or skipped)")
        try:
            part = encode_prompts(tokenizer, mine, config.max_prompt_length, config.on_too_long, origin=str(path))
        except DataError as error:
            raise DataError(f"ppo: prompt_weights[{i}]: {path}: {error}") from None
        encoded += part
        sizes.append(len(part))
    total = sum(config.prompt_weights)
    logger.info("ppo prompts: %s", "; ".join(
        f"{weight / total:.0%} of the episodes from {path} ({size} prompts)"
        for path, weight, size in zip(config.prompts, config.prompt_weights, sizes)))
    return encoded, sizes


class PPOTrainer:
    def __init__(self, config: PPOConfig):
        if not config.prompts:
            raise DataError("ppo: no prompt files given (set prompts=[FILE, ...])")
        if not config.reward_model:
            raise DataError("ppo: no reward model given (set reward_model=FOLDER)")
        self.config = config
        self.accelerator = accelerator = make_accelerator(config)
        check_batching(config, accelerator.num_processes)
        self.tokenizer = tokenizer = load_tokenizer(config.model, config.chat_template)
        files = [read_prompts(path, config.skip_invalid) for path in config.prompts]
        self.splits = splits = split_records([p for file in files for p in file], config.seed,
                                             config.valid_fraction, config.test_fraction)
        train_records = sample_records(splits["train"], config.max_examples, config.seed)
        self.train_prompts, sizes = encode_train_prompts(tokenizer, config, files, train_records)
        self.valid_prompts = encode_prompts(tokenizer, splits["valid"], config.max_prompt_length, "skip") \
            if splits["valid"] else []
        self.ptx_blocks = None
        if config.ptx_coef > 0:
            if not config.pretraining:
                raise DataError("ppo: ptx_coef > 0 needs a pretraining text file (set pretraining=FILE or ptx_coef=0)")
            train_text, _ = split_text(read_text(config.pretraining), config.ptx_held_out_fraction)
            self.ptx_blocks = pack_text(tokenizer, train_text, config.ptx_block_size)

        # the trained models' kernel, and the reference's: it computes as the policy it starts equal to (KL 0
        # before the first update); the frozen reward model keeps transformers' default
        attention = {"attn_implementation": training_attention(
            config.attn_implementation, config.max_length, accelerator.device)}
        policy = load_causal_lm(config.model, tokenizer=tokenizer, **attention)
        if config.lora:  # the reference is the policy's backbone: one copy of the weights serves both
            self.reference = WithoutAdapters(add_lora(policy, config.lora))
        else:
            self.reference = freeze(load_causal_lm(config.model, tokenizer=tokenizer, **attention)
                                    ).to(accelerator.device)
        reward_tokenizer = load_tokenizer(config.reward_model)
        self.rloo = config.advantage == "rloo"  # REINFORCE leave-one-out: no value model at all
        if self.rloo:
            value = None
            self.reward_model = freeze(load_scalar_model(config.reward_model, reward_tokenizer, trained=True)
                                       ).to(accelerator.device)
        elif not same_tokenizer(tokenizer, reward_tokenizer, texts_too=False) and not config.value_model:
            raise DataError(f"ppo.value_model: the reward model {config.reward_model} has another vocabulary than "
                            f"the policy {config.model}, and the value model reads the policy's tokens; set "
                            "value_model to a model with the policy's tokenizer (e.g. the SFT model)")
        elif config.lora and config.value_lora and not config.value_model:
            # the value model is the reward model with adapters (and its own copy of the head): with them
            # disabled it *is* the reward model, so one copy of those weights serves both, as for the policy
            value = load_scalar_model(config.reward_model, tokenizer, trained=True, **attention)
            add_lora(value.hf, config.lora, scalar_head=True)
            self.reward_model = WithoutAdapters(value)
        else:
            reward_model = load_scalar_model(config.reward_model, reward_tokenizer, trained=True)
            self.reward_model = freeze(reward_model).to(accelerator.device)
            value = load_scalar_model(config.value_model or config.reward_model, tokenizer, **attention)
            if config.lora and config.value_lora:
                add_lora(value.hf, config.lora, scalar_head=True)
        if value is not None and config.value_head == "zero":
            zero_head_weights(value)
        trained = [policy] if value is None else [policy, value]
        if config.train_layers:  # the lower blocks stay the SFT model's (the reward model's, for the value)
            for model in trained:
                train_top_layers(getattr(model, "hf", model), config.train_layers)
        for model in trained:  # eval mode, and no dropout even in train mode (checkpointing)
            disable_dropout(model.eval())
        if config.gradient_checkpointing:  # HF recomputes only in train mode: train mode with dropout 0
            for model in trained:
                enable_activation_checkpointing(getattr(model, "hf", model))
        groups = [{"params": trainable_parameters(policy), "lr": config.learning_rate}]
        if value is not None:
            groups.append({"params": trainable_parameters(value), "lr": config.value_learning_rate})
        optimizer = torch.optim.AdamW(groups, betas=config.adam_betas, eps=config.adam_eps, weight_decay=0.0,
                                      fused=None if accelerator.is_fsdp2 else True)  # 5x the for-loop's speed on a CPU
        if value is None:
            self.policy, self.optimizer = accelerator.prepare(policy, optimizer)
            self.value = None
        elif accelerator.is_fsdp2:  # accelerate shards one module per prepare: the two trained ones in one
            both, self.optimizer = accelerator.prepare(PolicyAndValue(policy, value), optimizer)
            self.policy, self.value = both.policy, both.value
        else:
            self.policy, self.value, self.optimizer = accelerator.prepare(policy, value, optimizer)
        self.kl_coef = config.kl_coef
        self.guard = NonFiniteGuard(config.max_bad_steps, lambda flag: any_process(accelerator, flag))
        self.checkpoints, self.current_step = None, 0
        self.sum_over_processes = sum_over_processes(accelerator)  # whitening's statistics: the global batch's
        self.health = HealthMonitor(config.health)
        # with one minibatch, the update's forward doubles as the rollout's policy and value scoring
        self.score_in_update = config.num_minibatches == 1
        # the same prompt order on every process, different sampling noise (DESIGN §19)
        self.prompt_order = torch.Generator().manual_seed(config.run_seed)
        self.sampling = torch.Generator(device=accelerator.device).manual_seed(
            config.run_seed + 1000 * accelerator.process_index)
        self.ptx_order = torch.Generator().manual_seed(config.run_seed + 1)
        self.prompt_sampler = PromptSampler(sizes, config.prompt_weights, self.prompt_order)
        self.engine = RolloutEngine(
            accelerator.unwrap_model(self.policy), self.reference, self.value, self.reward_model, tokenizer,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, no_eos_score=config.no_eos_score,
            autocast=accelerator.autocast, generator=self.sampling,
            dtype=torch.bfloat16 if accelerator.mixed_precision == "bf16" else None,
            engine=config.rollout_engine, compile=config.compile_decode,
            reward_tokenizer=None if same_tokenizer(tokenizer, reward_tokenizer) else reward_tokenizer,
            # groups of rows on one CPU process; several processes must run as many forwards as each other
            # (DDP syncs buffers and FSDP2 gathers weights in every forward): one group each
            row_group_overhead=grouping_overhead(accelerator.device) if accelerator.num_processes == 1 else None)

    # ---- data -------------------------------------------------------------------------
    def next_prompts(self, count: int) -> list[tuple[list[int], list]]:
        """This process's ``count`` prompts of the next batch; with RLOO, count / k prompts, each k
        times in a row (a group stays on one process)."""
        rank, world, k = self.accelerator.process_index, self.accelerator.num_processes, self.config.group_size
        chosen = [self.prompt_sampler.draw() for _ in range(count // k * world)]
        return [self.train_prompts[i] for i in chosen[rank::world] for _ in range(k)]

    def next_ptx_batch(self) -> torch.Tensor:
        """This process's share of the next pretraining batch: every process draws the same
        ``ptx_batch_size`` blocks and takes every N-th, so N processes read what one would."""
        index = torch.randint(len(self.ptx_blocks), (self.config.ptx_batch_size,), generator=self.ptx_order)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return self.ptx_blocks[index[rank::world]].to(self.accelerator.device)

    # ---- one PPO step -----------------------------------------------------------------
    def step(self, prompts: list[tuple[list[int], list]]) -> dict[str, float]:
        """One PPO step on this process's share of prompts, each (token ids, conversation)."""
        config, accelerator = self.config, self.accelerator
        started = time.perf_counter()
        batch = self.engine.rollout(*zip(*prompts), score_policy=not self.score_in_update)
        rollout_time = time.perf_counter() - started
        first_forward = None
        if self.score_in_update:  # one minibatch: its forward, before any update, is the rollout policy's
            first_forward = self.forward_minibatch(batch)
            self.engine.take_policy_scores(batch, first_forward)

        reduce = self.sum_over_processes
        # the reward's preference for length in this batch (score per token), removed on request
        scored = batch.ended_with_eos if config.no_eos_score is not None else torch.ones_like(batch.ended_with_eos)
        scores, length_slope = length_regressed_scores(batch.scores, batch.response_mask.sum(1), scored, reduce)
        if not config.regress_out_length:
            scores = batch.scores
        batch.rewards, kl = kl_penalized_rewards(scores, batch.logprobs, batch.ref_logprobs,
                                                 batch.response_mask, self.kl_coef)
        if config.whiten_rewards:
            batch.rewards = whiten(batch.rewards, batch.response_mask, shift_mean=False, reduce=reduce)
        if self.rloo:  # one advantage per response, on each of its tokens; no critic, nothing to whiten
            advantages = rloo_advantages(batch.rewards.sum(1), config.rloo_k)
            batch.advantages = advantages[:, None] * batch.response_mask
            batch.returns = torch.zeros_like(batch.rewards)
        else:
            advantages, batch.returns = gae_advantages(batch.rewards, batch.values, batch.response_mask,
                                                       config.gamma, config.lam)
            batch.advantages = whiten(advantages, batch.response_mask, reduce=reduce)

        stats: dict[str, list[float]] = {}
        minibatch_size = len(prompts) // config.num_minibatches
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(prompts), generator=self.prompt_order)
            for start in range(0, len(prompts), minibatch_size):
                if first_forward is not None:  # the whole batch, forwarded already
                    minibatch, forward, first_forward = batch, first_forward, None
                else:
                    minibatch = batch.select(order[start:start + minibatch_size])
                    forward = self.forward_minibatch(minibatch)
                for name, value in self.update(minibatch, forward).items():
                    stats.setdefault(name, []).append(value)

        sequence_kl = kl.sum(1)
        # means over this process's episodes (every process has as many), then over the processes:
        # what is logged, what β adapts to and what the health monitor judges is the same everywhere
        metrics = mean_over_processes(accelerator, {
            "objective/scores": batch.scores.mean().item(),
            "objective/kl": sequence_kl.mean().item(),
            "objective/non_score_reward": (-self.kl_coef * sequence_kl).mean().item(),
            "objective/rlhf_reward": (batch.scores - self.kl_coef * sequence_kl).mean().item(),
            "objective/length_slope": length_slope.item(),
            "rollout/response_length": batch.response_mask.sum(1).mean().item(),
            "rollout/eos_fraction": batch.ended_with_eos.float().mean().item(),
            "rollout/repeated_ngrams": repeated_ngram_fraction(batch.response_ids, batch.response_mask).mean().item(),
            **{name: sum(values) / len(values) for name, values in stats.items()},
        })
        metrics["objective/kl_coef"] = self.kl_coef
        if self.value is not None:
            metrics["ppo/val/var_explained"] = explained_variance(batch.values, batch.returns, batch.response_mask,
                                                                  reduce).item()
            metrics["ppo/returns/mean"] = masked_mean(batch.returns, batch.response_mask, reduce).item()
        observed_kl = metrics["objective/kl"]
        if config.adaptive_kl:
            self.kl_coef = adaptive_kl_coef(self.kl_coef, observed_kl, config.target_kl,
                                            len(prompts) * accelerator.num_processes, config.kl_horizon)
        elapsed = time.perf_counter() - started
        metrics["time/episodes_per_s"] = len(prompts) * accelerator.num_processes / elapsed
        metrics["time/rollout_fraction"] = rollout_time / elapsed
        return metrics

    def forward_minibatch(self, mb: RolloutBatch) -> dict[str, torch.Tensor]:
        """The policy's log-probs (and entropies), the values and the ptx loss, with gradients."""
        config = self.config
        ids, mask = mb.full_sequence()
        groups = row_groups(mb.query_mask, mb.response_mask, self.engine.row_group_overhead)
        for model in self.trained_models().values():
            model.train(config.gradient_checkpointing)
        with self.accelerator.autocast():
            logprobs, entropy = response_logprobs(self.policy, ids, mask, mb.response_ids, config.temperature, groups,
                                                  with_entropy=True)
            values = None if self.value is None else \
                response_values(self.value, ids, mask, mb.query_ids.shape[1], groups)
            ptx_loss = torch.zeros((), device=ids.device)
            if self.ptx_blocks is not None:
                ptx_ids = self.next_ptx_batch()
                ptx_logits = self.policy(input_ids=ptx_ids).logits
                ptx_loss = response_lm_loss(ptx_logits, ptx_ids, torch.ones_like(ptx_ids))
        return {"logprobs": logprobs, "entropy": entropy, "values": values, "ptx_loss": ptx_loss}

    def update(self, mb: RolloutBatch, forward: dict[str, torch.Tensor]) -> dict[str, float]:
        """PPO-ptx loss on a forwarded minibatch, backward, clip, optimizer step."""
        config, accelerator = self.config, self.accelerator
        ptx_loss = forward["ptx_loss"]
        policy_loss, policy_stats = ppo_policy_loss(forward["logprobs"], mb.logprobs, mb.advantages, mb.response_mask,
                                                    config.clip_range)
        value_stats = {}
        if forward["values"] is None:  # RLOO: no critic
            value_loss = torch.zeros((), device=policy_loss.device)
        else:
            value_loss, value_clipfrac = ppo_value_loss(forward["values"], mb.values, mb.returns, mb.response_mask,
                                                        config.value_clip_range)
            value_stats = {"ppo/loss/value": value_loss.item(), "ppo/val/clipfrac": value_clipfrac.item()}
        loss = ppo_ptx_loss(policy_loss, value_loss, ptx_loss, config.value_coef, config.ptx_coef)
        accelerator.backward(loss)
        models = self.trained_models().values()
        for model in models:
            model.eval()
        norm = accelerator.clip_grad_norm_([p for model in models for p in model.parameters()], config.max_grad_norm)
        if self.guard.check("ppo", self.current_step, loss=loss, gradient_norm=norm,
                            last_checkpoint=self.checkpoints and self.checkpoints.last_saved):
            self.optimizer.step()
        self.optimizer.zero_grad()
        entropy = masked_mean(forward["entropy"], mb.response_mask)
        return {
            "ppo/loss/policy": policy_loss.item(), "ppo/loss/ptx": ptx_loss.item(), "ppo/loss/total": loss.item(),
            "ppo/policy/clipfrac": policy_stats["clipfrac"].item(),
            "ppo/policy/approxkl": policy_stats["approxkl"].item(),
            "ppo/policy/entropy": entropy.item(), **value_stats,
        }

    def trained_models(self) -> dict:
        """The models the update trains: the policy, and the value model unless RLOO has none."""
        return {"policy": self.policy} if self.value is None else {"policy": self.policy, "value": self.value}

    # ---- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, prompts: list[tuple[list[int], list]], batch_size: int) -> dict[str, float]:
        """Fresh samples from the policy and from the SFT reference on the same prompts:
        mean RM scores, win rate of policy over SFT (ties count half) and KL(policy ‖ SFT).

        Each process samples every N-th prompt, in as many batches as the others (a short or empty
        share is padded with a prompt whose extra results are dropped), and the results are gathered."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        share = prompts[rank::world]
        padded = share + (share[:1] or prompts[:1]) * (-(-len(prompts) // world) - len(share))  # none: still calls
        policy_scores, sft_scores, kls = [], [], []
        for start in range(0, len(padded), batch_size):
            chunk = padded[start:start + batch_size]
            ours = self.engine.rollout(*zip(*chunk), source="policy")
            theirs = self.engine.rollout(*zip(*chunk), source="reference")
            policy_scores.append(ours.scores)
            sft_scores.append(theirs.scores)
            kls.append((ours.logprobs - ours.ref_logprobs).sum(1))
        results = [(float(a), float(b), float(c)) for a, b, c in
                   zip(*(torch.cat(parts).tolist() for parts in (policy_scores, sft_scores, kls)))][:len(share)]
        ours, theirs, kl = torch.tensor(gather_object(results) if world > 1 else results).T
        wins = (ours > theirs).float() + 0.5 * (ours == theirs).float()
        return {"eval/score_policy": ours.mean().item(), "eval/score_sft": theirs.mean().item(),
                "eval/win_rate_vs_sft": wins.mean().item(), "eval/kl_to_sft": kl.mean().item(),
                "eval/prompts": float(len(ours))}  # gathered: every prompt once

    def train(self, control: RunControl = RunControl()) -> dict:
        config, accelerator = self.config, self.accelerator
        started = time.time()
        log = MetricsLog(config.metrics_file, "ppo", accelerator, config.output_dir, config)
        per_process = config.rollout_batch_size // accelerator.num_processes
        steps = math.ceil(config.total_episodes / config.rollout_batch_size)
        eval_prompts = (self.valid_prompts or self.train_prompts)[:config.eval_prompts]
        generators = {"prompt_order": self.prompt_order, "sampling": self.sampling, "ptx_order": self.ptx_order}
        with staged_output(config, "ppo", accelerator, control) as staging:
            self.checkpoints = Checkpoints(staging, "ppo", accelerator, config, config.keep_checkpoints)
            first = 1
            resumed = self.checkpoints.resume(control, log, generators)
            if resumed is not None:
                first = resumed["step"] + 1
                self.kl_coef = resumed["kl_coef"]
                self.prompt_sampler.restore(resumed["prompt_queue"])
                self.guard.restore(resumed["guard"])
                self.health.restore(resumed["health"])
            due, stop, replicas_due = every(config.checkpoint_every), StopRequest(), every(config.check_replicas_every)
            snapshot_due = every(config.snapshot_every)
            progress = tqdm(range(first, steps + 1), desc="ppo", initial=first - 1, total=steps,
                            disable=not accelerator.is_local_main_process)
            loop_started = time.time()
            with stop.installed():
                for step in progress:
                    self.current_step = step
                    metrics = self.step(self.next_prompts(per_process))
                    metrics["episodes"] = step * config.rollout_batch_size
                    metrics["train/skipped_steps"] = self.guard.skipped
                    alerts = self.health.check(step, metrics)
                    if alerts:
                        metrics["health/alerts"] = alerts
                    log.log(step, metrics)
                    progress.set_postfix(score=f"{metrics['objective/scores']:.3f}",
                                         kl=f"{metrics['objective/kl']:.2f}")
                    if snapshot_due(step):  # a plain HF folder of the policy, for the over-optimisation curve
                        save_checkpoint(staging / SNAPSHOTS / f"step-{step:06d}", self.policy, self.tokenizer,
                                        accelerator)
                    if replicas_due(step):
                        check_replicas(accelerator, "ppo", step, self.trained_models())
                    stopping = any_process(accelerator, stop.requested)  # a signal to one stops all
                    if due(step) or stopping:
                        self.checkpoints.save(step, {
                            "total_steps": steps, "kl_coef": self.kl_coef, "prompt_queue": self.prompt_sampler.state(),
                            "guard": self.guard.state(), "health": self.health.state(), "metrics": log.state()},
                            generators)
                    if stopping:
                        raise KeyboardInterrupt
            trained = time.time()  # the rate below is training's, without set-up or the evaluation
            after = self.evaluate(eval_prompts, per_process)
            log.log(steps, after)
            summary = {**after, "steps": steps,
                       "episodes": steps * config.rollout_batch_size,
                       "episodes_per_s": (steps - first + 1) * config.rollout_batch_size
                       / max(trained - loop_started, 1e-9)}
            save_checkpoint(staging, self.policy, self.tokenizer, accelerator)
            files = {f"prompts[{i}]": p for i, p in enumerate(config.prompts)}
            if config.pretraining:
                files["pretraining"] = config.pretraining
            write_metadata(staging, "ppo", config, files, summary, accelerator, started, self.splits)
        log.close()
        return summary


def train_ppo(config: PPOConfig, control: RunControl = RunControl()) -> dict:
    check_stage_output(config, "ppo")  # before any loading: a refused output_dir costs nothing
    return PPOTrainer(config).train(control)
