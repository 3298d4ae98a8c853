"""PPO's health: the signs of a policy collapsing or gaming the reward model, checked every step.

Each check compares one of the step's metrics with a threshold of ``ppo.health`` (or with the
run's first steps): KL to SFT too large or rising fast, the policy's entropy collapsing, responses
repeating themselves, their length drifting, fewer of them ending. A check that starts failing is
a warning in the log (once, until it recovers) and an alert in the step's metrics row
(``health/alerts``), which ``report.html`` lists in its "Health" panel.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def repeated_ngram_fraction(response_ids: torch.Tensor, response_mask: torch.Tensor, n: int = 4) -> torch.Tensor:
    """Per response, the fraction of its n-grams that already occurred earlier in it (0: none repeat;
    near 1: a loop such as "!!!!"). (B, R) → (B,); responses shorter than n + 1 tokens score 0."""
    fractions = []
    for row, mask in zip(response_ids.tolist(), response_mask.bool().tolist()):
        tokens = [t for t, keep in zip(row, mask) if keep]
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        fractions.append(1 - len(set(grams)) / len(grams) if len(grams) > 1 else 0.0)
    return torch.tensor(fractions)


class HealthMonitor:
    """Checks each PPO step's metrics against ``settings`` (a :class:`rlhf.config.HealthSettings`)."""

    def __init__(self, settings):
        self.settings = settings
        self.baseline: dict[str, float] = {}  # the mean of the first ``window`` steps
        self.first: list[dict] = []
        self.kl_history: list[float] = []
        self.failing: set[str] = set()

    def check(self, step: int, metrics: dict) -> list[str]:
        """The alerts of this step (also logged, once per spell of failing)."""
        s = self.settings
        if len(self.first) < s.window:
            self.first.append(metrics)
            if len(self.first) == s.window:
                self.baseline = {name: sum(m[name] for m in self.first) / s.window
                                 for name in ("rollout/response_length", "rollout/eos_fraction")}
        self.kl_history.append(metrics["objective/kl"])
        kl, entropy = metrics["objective/kl"], metrics.get("ppo/policy/entropy")
        alerts = {}
        if kl > s.max_kl:
            alerts["kl"] = f"KL to SFT {kl:.2f} nats > max_kl {s.max_kl}"
        earlier = self.kl_history[-s.window - 1:-1]
        if len(earlier) == s.window and kl > s.min_kl_for_growth and kl > s.kl_growth * max(sum(earlier) / s.window,
                                                                                            1e-6):
            alerts["kl_rising"] = f"KL to SFT {kl:.2f} nats is {kl / max(sum(earlier) / s.window, 1e-6):.1f}× its " \
                                  f"mean over the last {s.window} steps (kl_growth {s.kl_growth})"
        if entropy is not None and entropy < s.min_entropy:
            alerts["entropy"] = f"policy entropy {entropy:.3f} nats per token < min_entropy {s.min_entropy}"
        repeated = metrics.get("rollout/repeated_ngrams")
        if repeated is not None and repeated > s.max_repeated_ngrams:
            alerts["repetition"] = (f"{repeated:.0%} of the responses' 4-grams repeat earlier ones > "
                                    f"max_repeated_ngrams {s.max_repeated_ngrams:.0%}")
        if self.baseline:
            length, start = metrics["rollout/response_length"], self.baseline["rollout/response_length"]
            if start > 0 and abs(length - start) / start > s.max_length_drift:
                alerts["length"] = (f"mean response length {length:.1f} tokens drifted from {start:.1f} "
                                    f"(more than max_length_drift {s.max_length_drift:.0%})")
            ended, ended_start = metrics["rollout/eos_fraction"], self.baseline["rollout/eos_fraction"]
            if ended < ended_start * s.min_eos_fraction_ratio:
                alerts["ending"] = (f"{ended:.0%} of responses end (EOS), down from {ended_start:.0%} "
                                    f"(below min_eos_fraction_ratio {s.min_eos_fraction_ratio})")
        for name in alerts.keys() - self.failing:
            logger.warning("ppo health, step %d: %s", step, alerts[name])
        for name in self.failing - alerts.keys():
            logger.info("ppo health, step %d: %s is back within its threshold", step, name)
        self.failing = set(alerts)
        return list(alerts.values())

    def state(self) -> dict:
        return {"first": self.first, "baseline": self.baseline, "kl_history": self.kl_history,
                "failing": sorted(self.failing)}

    def restore(self, state: dict) -> None:
        self.first, self.baseline = state.get("first", []), state.get("baseline", {})
        self.kl_history, self.failing = state.get("kl_history", []), set(state.get("failing", []))
