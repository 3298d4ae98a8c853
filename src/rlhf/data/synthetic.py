"""A learnable synthetic task for the tiny preset: responses are short word lists, and
a response ranks higher the more times it says the target word. The reward model must
learn to count it and PPO must learn to say it more often than SFT does."""

from __future__ import annotations

import random
from pathlib import Path

from rlhf.outputs import write_jsonl

TARGET_WORD = "good"
WORDS = ["good", "cat", "blue", "tree", "sun", "rock", "milk", "door"]
TOPICS = ["cats", "the sea", "trees", "music", "bread", "rain", "a city", "the moon", "snow", "a river"]


def target_count(text: str) -> int:
    return text.split().count(TARGET_WORD)


def _response(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))


def _prompt(rng: random.Random) -> str:
    return f"Say words about {rng.choice(TOPICS)} {rng.randint(0, 999)}."


def synthetic_paths(folder: str | Path) -> dict[str, str]:
    """Where :func:`write_synthetic_data` writes each kind of record in ``folder``."""
    folder = Path(folder)
    return {"demonstrations": str(folder / "demonstrations.jsonl"), "comparisons": str(folder / "comparisons.jsonl"),
            "prompts": str(folder / "prompts.jsonl"), "pretraining": str(folder / "pretraining.txt")}


def write_synthetic_data(folder: str | Path, seed: int = 0, n_demos: int = 400, n_comparisons: int = 600,
                         n_prompts: int = 200, k: int = 4) -> dict[str, str]:
    """Write demonstrations, K-way comparisons (dense ranks by target count, ties allowed),
    prompts and pretraining text as JSONL/text; return their paths by kind."""
    rng = random.Random(seed)
    folder = Path(folder)
    demos = [{"prompt": _prompt(rng), "response": _response(rng)} for _ in range(n_demos)]
    comparisons = []
    while len(comparisons) < n_comparisons:
        responses = [_response(rng) for _ in range(k)]
        counts = [target_count(r) for r in responses]
        if len(set(counts)) < 2:
            continue
        levels = sorted(set(counts), reverse=True)
        comparisons.append({
            "prompt": _prompt(rng),
            "responses": [{"text": r, "rank": levels.index(c) + 1} for r, c in zip(responses, counts)],
        })
    prompts = [{"prompt": _prompt(rng)} for _ in range(n_prompts)]
    paths = {kind: Path(path) for kind, path in synthetic_paths(folder).items()}
    write_jsonl(paths["demonstrations"], demos, overwrite=True)
    write_jsonl(paths["comparisons"], comparisons, overwrite=True)
    write_jsonl(paths["prompts"], prompts, overwrite=True)
    paths["pretraining"].write_text("\n".join(_response(rng) + "." for _ in range(2000)) + "\n", encoding="utf-8")
    return {kind: str(path) for kind, path in paths.items()}
