"""Rankings from demonstrations that show *when* to refuse: each demonstration against its opposite.

HH-harmless teaches a reward model that refusing is always safe: on the demo's models a canned
refusal outscores the base model's own answer on 32 of 32 ordinary prompts, and PPO follows that
pull into refusing ordinary requests. The paper's labelers ranked helpfulness first on benign
requests and harmlessness first on harmful ones. A demonstration file that holds both polite
refusals of harmful requests and answers to ordinary ones carries that label in each
demonstration, so each becomes one ranking of K = 2 or 3 responses:

- a refused (harmful) request: the demonstration and a generic refusal, tied at rank 1, above the
  model's own response (rank 2) when that response complies;
- an answered (ordinary) request: the demonstration (1) above the model's own response (2) when that
  response answers, above a generic refusal (3).

The same generic refusals win on harmful requests and lose on ordinary ones, so only the prompt tells
them apart: the reward model is taught when refusing pays, not that it always does, nor (as answer >
refusal pairs alone taught, docs/alignment.md) that it never does.
"""

from __future__ import annotations

from collections.abc import Callable

from rlhf.data.records import Comparison, Demonstration

# the refusals that a ranking ties with a refusal demonstration, or puts last under an answer
GENERIC_REFUSALS = (
    "I'm sorry, but I can't help with this request.",
    "Sorry, I can't assist with that.",
    "I'm afraid I can't do that.",
    "I can't help with that request, sorry.",
    "I'm sorry, I won't be able to help with that.",
)


def contrast_rankings(demonstrations: list[Demonstration], samples: list[str],
                      is_refusal: Callable[[str], bool]) -> tuple[list[Comparison], dict[str, int]]:
    """One ranking per demonstration, with ``samples[i]`` a model's own response to demonstration i's
    prompt and ``is_refusal`` the judge of whether a response declines. A refused request whose sample
    also refuses makes no ranking (the two refusals would tie). Returns the rankings and their counts:
    ``harmful``, ``ordinary``, and ``skipped``."""
    if len(samples) != len(demonstrations):
        raise ValueError(f"contrast_rankings: {len(samples)} samples for {len(demonstrations)} demonstrations")
    rankings, counts = [], {"harmful": 0, "ordinary": 0, "skipped": 0}
    for i, (demo, sample) in enumerate(zip(demonstrations, samples)):
        generic = GENERIC_REFUSALS[i % len(GENERIC_REFUSALS)]
        if is_refusal(demo.response):
            if is_refusal(sample):
                counts["skipped"] += 1
                continue
            responses, ranks, kind = [demo.response, generic, sample], [1, 1, 2], "harmful"
        elif is_refusal(sample):
            responses, ranks, kind = [demo.response, generic], [1, 2], "ordinary"
        else:
            responses, ranks, kind = [demo.response, sample, generic], [1, 2, 3], "ordinary"
        counts[kind] += 1
        rankings.append(Comparison(demo.prompt, responses, ranks, demo.user_id, demo.source,
                                   {"contrast": kind}))
    return rankings, counts


def ranking_row(comparison: Comparison) -> dict:
    """A ranking as one line of the ranked JSONL format that ``read_comparisons`` reads."""
    row = {"prompt": comparison.prompt,
           "responses": [{"text": text, "rank": rank} for text, rank in zip(comparison.responses, comparison.ranks)]}
    if comparison.user_id is not None:
        row["user_id"] = comparison.user_id
    if comparison.metadata:
        row["metadata"] = comparison.metadata
    return row
