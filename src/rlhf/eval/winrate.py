"""Win rates with bootstrap confidence intervals, ties counted as half a win."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def outcomes(policy_scores, baseline_scores) -> np.ndarray:
    """1 where the policy's score is higher, ½ on a tie, 0 where it is lower: (n,) for one response per
    prompt, (n, k) for k draws per prompt (draw j of the policy against draw j of the baseline)."""
    policy, baseline = np.asarray(policy_scores, float), np.asarray(baseline_scores, float)
    if policy.shape != baseline.shape or policy.size == 0 or policy.ndim not in (1, 2):
        raise ValueError(f"need two equally long, non-empty score lists (a score per prompt, or per prompt and "
                         f"draw), got shapes {policy.shape} and {baseline.shape}")
    return (policy > baseline) + 0.5 * (policy == baseline)


def win_rate(policy_scores, baseline_scores, n_boot: int = 2000,
             confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean outcome and a percentile-bootstrap interval over prompts. With k draws per prompt ((n, k)
    scores) a prompt's outcome is the mean of its k, and the interval still resamples prompts: the
    draws narrow each prompt's noise, not the spread between prompts."""
    wins = outcomes(policy_scores, baseline_scores)
    per_prompt = wins.mean(1) if wins.ndim == 2 else wins
    rng = np.random.default_rng(seed)
    resampled = per_prompt[rng.integers(0, per_prompt.size, size=(n_boot, per_prompt.size))].mean(1)
    draws = {"draws": int(wins.shape[1])} if wins.ndim == 2 else {}
    return {"win_rate": float(per_prompt.mean()), **_percentile_interval(resampled, confidence),
            "n": int(per_prompt.size), **draws}


def _percentile_interval(resampled, confidence: float) -> dict[str, float]:
    """The central ``confidence`` interval of bootstrap draws: their α and 1 − α quantiles, α = (1 − c)/2."""
    alpha = (1 - confidence) / 2
    return {"low": float(np.quantile(resampled, alpha)), "high": float(np.quantile(resampled, 1 - alpha))}


def length_controlled_win_rate(policy_scores, baseline_scores, policy_tokens, baseline_tokens, n_boot: int = 1000,
                               confidence: float = 0.95, seed: int = 0, l2: float = 0.1) -> dict[str, float]:
    """The win rate at equal length: AlpacaEval 2's length control (Dubois et al., 2024) without its
    per-instruction term. With Δᵢ the policy's response length minus the baseline's (tokens) and
    xᵢ = tanh(Δᵢ / sd(Δ)), fit P(winᵢ) = σ(θ + φ·xᵢ) by maximum likelihood, ties counting ½ (plus
    ``l2``·φ², which keeps φ finite when length alone separates wins from losses), and report σ(θ): the
    win rate predicted at Δ = 0. ``length_coef`` is φ (below 0: the judge prefers the shorter response).
    With every Δ equal to 0 the fit is the raw win rate. With k draws per prompt ((n, k) scores and
    lengths) every pair is a point of the fit. Interval: percentile bootstrap over prompts (a prompt's
    draws go together), refitting each resample."""
    from scipy.optimize import minimize
    from scipy.special import expit

    wins = outcomes(policy_scores, baseline_scores)
    delta = np.asarray(policy_tokens, float) - np.asarray(baseline_tokens, float)
    if delta.shape != wins.shape:
        raise ValueError(f"need one length per score, got lengths {delta.shape} for scores {wins.shape}")
    spread = delta.std()
    x = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)

    def fit(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        y, x = y.ravel(), x.ravel()

        def loss(w):  # −Σ [y z − log(1 + eᶻ)] + l2 φ², z = θ + φ x
            z = w[0] + w[1] * x
            residual = expit(z) - y
            return (np.logaddexp(0, z) - y * z).sum() + l2 * w[1] ** 2, \
                np.array([residual.sum(), residual @ x + 2 * l2 * w[1]])
        return minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", options={"gtol": 1e-9}).x

    theta, phi = fit(wins, x)
    n = wins.shape[0]
    rng = np.random.default_rng(seed)
    resampled = [expit(fit(wins[i], x[i])[0]) for i in rng.integers(0, n, size=(n_boot, n))]
    draws = {"draws": int(wins.shape[1])} if wins.ndim == 2 else {}
    return {"win_rate": float(expit(theta)), **_percentile_interval(resampled, confidence), "n": int(n),
            "length_coef": float(phi), **draws}


def win_rate_by_category(policy_scores, baseline_scores, categories: list[str], **options) -> dict[str, dict]:
    groups = defaultdict(list)
    for index, category in enumerate(categories):
        groups[category].append(index)
    return {category: win_rate([policy_scores[i] for i in index], [baseline_scores[i] for i in index], **options)
            for category, index in sorted(groups.items())}


def read_human_labels(path) -> tuple[list[float], list[str | None]]:
    """Human judgements as outcomes: JSONL rows ``{"winner": "policy" | "baseline" | "tie"}``
    (optionally with ``category``). Returns (outcomes, categories)."""
    from rlhf.data.formats import iter_rows
    from rlhf.data.readers import label_field
    from rlhf.data.records import DataError

    values = {"policy": 1.0, "tie": 0.5, "baseline": 0.0}
    results, categories = [], []
    for where, row in iter_rows(path):
        winner = row.get("winner")
        if not isinstance(winner, str) or winner not in values:
            raise DataError(f"{where}: field 'winner' must be one of policy, baseline, tie; got {winner!r}"[:300])
        results.append(values[winner])
        categories.append(label_field(row, "category", where))
    if not results:
        raise DataError(f"{path}: no labels")
    return results, categories


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> dict[str, float]:
    """A rate and its Wilson score interval (sound at 0 or n successes, where the normal one collapses):
    centre (p + z²/2n) / (1 + z²/n), half-width z √(p(1−p)/n + z²/4n²) / (1 + z²/n)."""
    from statistics import NormalDist

    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    rate = successes / n
    scale = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / scale
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / scale
    return {"rate": rate, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}
