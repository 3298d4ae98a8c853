"""Best-of-n: sample n responses per prompt from a policy and keep the one the reward model scores
highest — the baseline every RL method must beat at the same KL. The KL of best-of-n to the policy it
samples from is analytic (Stiennon et al. 2020, Gao et al. 2022): log n − (n − 1)/n nats."""

from __future__ import annotations

import math
from pathlib import Path

from rlhf.data.records import Conversation


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ policy) in nats, for n ≥ 1: log n − (n − 1)/n."""
    if n < 1:
        raise ValueError(f"best-of-n needs n ≥ 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(model: str, reward_model: str, prompts: list[Conversation], ns: list[int], max_new_tokens: int,
              temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> tuple[list[dict], list[dict]]:
    """Sample max(ns) responses per prompt once, score them all with ``reward_model``; best-of-n for each
    n in ``ns`` is the best of each prompt's first n samples. Returns (one row per prompt: its samples,
    their scores and the best response for each n; one summary per n: mean best score and KL)."""
    from rlhf.eval.run import reward_scores
    from rlhf.generate import generate

    most = max(ns)
    repeated = [prompt for prompt in prompts for _ in range(most)]
    responses = generate(model, repeated, max_new_tokens, temperature, seed, batch_size=batch_size)
    scores = reward_scores(Path(reward_model), repeated, responses, batch_size)
    rows = []
    for index, prompt in enumerate(prompts):
        own = slice(index * most, (index + 1) * most)
        texts, values = responses[own], scores[own]
        best = {n: max(range(n), key=values.__getitem__) for n in ns}
        rows.append({"prompt": prompt, "responses": texts, "scores": values,
                     "best": {str(n): {"response": texts[k], "score": values[k]} for n, k in best.items()}})
    summary = [{"n": n, "kl": best_of_n_kl(n),
                "score": sum(row["best"][str(n)]["score"] for row in rows) / len(rows)} for n in ns]
    return rows, summary
