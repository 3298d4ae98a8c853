"""Losses and advantage estimation as pure functions on tensors.

Shapes: B = batch rows, T = sequence positions, K = responses per prompt, V = vocabulary.
Masks are 0/1 (or bool) tensors of the same shape as the values they select.
Nothing here touches a model, a file or a device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


Reduce = Callable[[torch.Tensor], torch.Tensor]


def _local(sums: torch.Tensor) -> torch.Tensor:
    return sums


def masked_mean(values: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _local) -> torch.Tensor:
    """Σ(values·mask) / Σmask; 0 when the mask is empty.

    ``reduce`` sums a tensor across processes (identity by default): with it the sums are global, and
    every process gets the mean over all processes' entries (for whitening under data parallelism)."""
    mask = mask.to(values.dtype)
    total, count = reduce(torch.stack([(values * mask).sum(), mask.sum()]))
    return total / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _local) -> torch.Tensor:
    """Unbiased variance of the masked entries (Bessel-corrected, as in the 2019 RLHF code), over every
    process's entries with a summing ``reduce``."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask, reduce)
    squares, count = reduce(torch.stack([((values - mean) ** 2 * mask).sum(), mask.sum()]))
    if count < 2:
        raise ValueError(f"whitening needs at least 2 unmasked values, got {int(count.item())}")
    return squares / (count - 1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           reduce: Reduce = _local) -> torch.Tensor:
    """(x − mean) / std over the masked entries (of every process, with a summing ``reduce``);
    masked-out entries come back as 0.

    With ``shift_mean=False`` the mean is added back (used for rewards, whose sign matters).
    """
    mean, var = masked_mean(values, mask, reduce), masked_var(values, mask, reduce)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


ROWS_AT_A_TIME = 4  # (rows, T, V) float copies at a time: a (16, 64, 49 152) batch needs 200 MB, not 800


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[token] for each position.

    logits (B, T, V) are the predictions *for* tokens (B, T) (already shifted). The same
    temperature as at sampling time must be used, or the KL to the reference grows too fast.
    A few rows at a time, so that the float copies of a bf16 batch never exist all at once.
    """
    return torch.cat([_token_logprobs(_log_softmax(rows, temperature), targets)
                      for rows, targets in zip(logits.split(ROWS_AT_A_TIME), tokens.split(ROWS_AT_A_TIME))])


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` (B, T), with gradients, and the entropy of each position's distribution
    (B, T) from the same log-softmax, without (a metric): one pass over the (B, T, V) logits, which
    need not be kept for the entropy."""
    parts = []
    for rows, targets in zip(logits.split(ROWS_AT_A_TIME), tokens.split(ROWS_AT_A_TIME)):
        logp = _log_softmax(rows, temperature)
        with torch.no_grad():
            entropy = _entropy(logp)
        parts.append((_token_logprobs(logp, targets), entropy))
    return torch.cat([lp for lp, _ in parts]), torch.cat([h for _, h in parts])


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # one (B, T, V) copy fewer
    return logits.log_softmax(-1)


def _token_logprobs(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def response_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over the tokens where ``loss_mask`` is 1.

    logits (B, T, V) from a causal LM on input_ids (B, T); loss_mask (B, T) marks the
    *target* tokens that count (response tokens and their EOS; never prompt or padding).
    loss = −Σ_t m_t · log p(x_t | x_<t) / Σ_t m_t, with position 0 never a target.
    """
    targets_mask = loss_mask[:, 1:].to(torch.float32)
    logprobs = token_logprobs(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logprobs, targets_mask)


def ranking_loss(scores: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's K-way reward-model loss, all pairs of a prompt in one batch element.

    scores (B, K) are r(x, y_k); ranks (B, K) are integers with 1 = best; valid (B, K) masks
    padding when prompts have different K. For each prompt b, over ordered pairs with
    rank_i < rank_j (equal ranks make no pair):
        loss_b = mean_{(i,j)} −log σ(r_i − r_j)
    and the loss is the mean of loss_b over prompts that have at least one pair (this is the
    paper's division by C(K, 2) when there are no ties). Returns (loss, pair accuracy), the
    accuracy being the share of all pairs with r_i > r_j.
    """
    valid = valid.bool()
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)  # (B, K, K): i ranked above j
    pairs = better & valid.unsqueeze(2) & valid.unsqueeze(1)
    margins = scores.float().unsqueeze(2) - scores.float().unsqueeze(1)
    pair_losses = -F.logsigmoid(margins) * pairs
    pairs_per_prompt = pairs.sum((1, 2))
    has_pairs = pairs_per_prompt > 0
    if not has_pairs.any():
        raise ValueError("ranking_loss: no prompt in the batch has two responses of different rank")
    per_prompt = pair_losses.sum((1, 2))[has_pairs] / pairs_per_prompt[has_pairs]
    accuracy = ((margins > 0) & pairs).sum() / pairs.sum()
    return per_prompt.mean(), accuracy


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023) on K-way rankings: the reward-model loss on the implicit reward
    r(x, y) = β·(log π(y|x) − log π_ref(y|x)).

    policy_logps, reference_logps (B, K) are Σ_t log p(y_t | x, y_<t) over each response's tokens;
    ranks, valid (B, K) as in :func:`ranking_loss`. For each prompt, over its ordered pairs
    (y_w ranked above y_l): −log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]),
    averaged per prompt, then over prompts; K = 2 is the paper's loss. Returns (loss, the share of
    pairs whose implicit rewards are in the right order)."""
    return ranking_loss(beta * (policy_logps.float() - reference_logps.float()), ranks, valid)


def length_regressed_scores(scores: torch.Tensor, lengths: torch.Tensor, fit: torch.Tensor,
                            reduce: Reduce = _local) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores without their least-squares dependence on response length (post-hoc length
    calibration of a reward, as in Huang et al. 2024, fitted on each rollout batch).

    scores, lengths (tokens), fit (bool): all (B,). Over the episodes in ``fit`` (of every process,
    with a summing ``reduce``): b = Σ(T − T̄)(r − r̄) / Σ(T − T̄)², and r'_i = r_i − b·(T_i − T̄)
    for them; the others come back unchanged. The fitted episodes keep their mean score and lose
    every linear correlation with length. b = 0 when fewer than two are fitted or all have one
    length. Returns (r' (B,), b (a 0-d tensor: score per token)).
    """
    weight, length = fit.double(), lengths.double()
    count, length_sum, score_sum = reduce(torch.stack([weight.sum(), (length * weight).sum(),
                                                       (scores.double() * weight).sum()]))
    centred = (length - length_sum / count.clamp(min=1.0)) * weight
    covariance, spread = reduce(torch.stack([(centred * (scores.double() - score_sum / count.clamp(min=1.0))).sum(),
                                             (centred ** 2).sum()]))
    slope = covariance / spread if count >= 2 and spread > 0 else torch.zeros((), dtype=torch.float64)
    return (scores.double() - slope * centred).to(scores.dtype), slope


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of the InstructGPT bandit episode.

    scores (B,) is the reward-model score; logprobs, ref_logprobs, response_mask are (B, T)
    over response tokens. kl_t = log π(y_t) − log π_ref(y_t) (so Σ_t kl_t is the sequence
    log-ratio), reward_t = −β·kl_t, and the score is added at the last real token.
    Positions outside the mask carry nothing. Returns (rewards, kl), both (B, T).
    """
    mask = response_mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    lengths = response_mask.long().sum(1)
    if (lengths == 0).any():
        raise ValueError("kl_penalized_rewards: a response has no tokens")
    last = lengths - 1
    rewards[torch.arange(rewards.shape[0]), last] += scores.to(rewards.dtype)
    return rewards, kl


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded response tokens.

    δ_t = r_t + γ·V_{t+1} − V_t (V past the last real token is 0);
    A_t = δ_t + γλ·A_{t+1}; returns_t = A_t + V_t. All (B, T); masked positions are 0.
    """
    mask = response_mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_advantage
    return advantages, (advantages + values) * mask


def rloo_advantages(sequence_rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): each of a prompt's k samples
    is judged against the mean of the other k − 1, A_i = R_i − (Σ_j R_j − R_i)/(k − 1), no critic.

    sequence_rewards (B,) holds B/k groups of k consecutive samples of one prompt each, R_i =
    score − β·Σ_t kl_t; returns A (B,). Each group's advantages sum to 0.
    """
    if k < 2 or sequence_rewards.shape[0] % k:
        raise ValueError(f"rloo_advantages: {sequence_rewards.shape[0]} rewards are not groups of k = {k} (k ≥ 2)")
    groups = sequence_rewards.view(-1, k)
    baseline = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean_t max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old).

    All inputs (B, T). Returns the loss and stats: clip fraction (share of tokens where the
    clipped branch is taken) and approx-KL ½·mean((log ρ)²).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), response_mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), response_mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, response_mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ½·mean_t max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²).

    All inputs (B, T). Returns the loss and the share of tokens where clipping bit.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), response_mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), response_mask)
    return loss, clipfrac.detach()


def ppo_ptx_loss(policy_loss: torch.Tensor, value_loss: torch.Tensor, ptx_loss: torch.Tensor,
                 value_coef: float, ptx_coef: float) -> torch.Tensor:
    """PPO-ptx as one objective: L = L_policy + c_v·L_value + γ_ptx·L_ptx (one backward pass).

    L_ptx is the LM loss (negative mean log-likelihood) on pretraining text, so minimising
    γ_ptx·L_ptx maximises γ_ptx·E[log π(x_pretrain)] as in the paper's objective.
    """
    return policy_loss + value_coef * value_loss + ptx_coef * ptx_loss


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       reduce: Reduce = _local) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over masked entries (1 = perfect value function)."""
    return 1.0 - masked_var(returns - values, mask, reduce) / masked_var(returns, mask, reduce).clamp(min=1e-8)


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target_kl: float, n_steps: int, horizon: int) -> float:
    """Ziegler et al.'s controller: β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon)."""
    proportional_error = min(max(observed_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + proportional_error * n_steps / horizon)
