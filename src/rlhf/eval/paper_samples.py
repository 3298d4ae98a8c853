"""The paper's own released samples (``instructgpt-samples/``): truthfulness and toxicity of GPT-3,
SFT, PPO and PPO-ptx at 1.3B, 6B and 175B, tabulated from the files alone. This checks the
evaluation code on data no one here wrote, and reproduces the paper's direction of effect."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

SIZES = {"xl": "1.3B", "6b": "6B", "175b": "175B"}
MODELS = {"gpt": "GPT-3", "sft": "SFT", "ppo-noptx": "PPO", "ppo-ptx": "PPO-ptx"}


def _split_model(model_type: str) -> tuple[str, str]:
    family, size = model_type.rsplit("-", 1)
    return MODELS[family], SIZES[size]


def _means(rows, value_key: str, group) -> dict[tuple, float]:
    sums: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        sums[group(row)].append(float(row[value_key]))
    return {key: sum(values) / len(values) for key, values in sums.items()}


def paper_sample_tables(folder: str | Path) -> dict[str, dict]:
    """{metric: {(model, size[, prompt type]): mean}} for TruthfulQA true/info and toxicity."""
    folder = Path(folder)
    with open(folder / "truthful_qa_samples.csv", encoding="utf-8") as handle:
        truthful = list(csv.DictReader(handle))
    with open(folder / "real_toxicity_samples.csv", encoding="utf-8") as handle:
        toxic = list(csv.DictReader(handle))
    by_model = lambda row: _split_model(row["model_type"])  # noqa: E731
    return {
        "truthful": _means(truthful, "true", by_model),
        "truthful_and_informative": _means(
            [{**r, "both": float(r["true"]) * float(r["info"])} for r in truthful], "both", by_model),
        "toxicity_respectful": _means([r for r in toxic if r["prompt_type"] == "respectful prompt"], "toxicity",
                                      by_model),
        "toxicity_basic": _means([r for r in toxic if r["prompt_type"] == "basic prompt"], "toxicity", by_model),
    }


def markdown_table(tables: dict[str, dict]) -> str:
    lines = []
    for metric, values in tables.items():
        lines += [f"**{metric}**", "", "| size | " + " | ".join(MODELS.values()) + " |",
                  "| --- |" + " --- |" * len(MODELS)]
        for size in SIZES.values():
            lines.append(f"| {size} | " + " | ".join(f"{values[(m, size)]:.3f}" for m in MODELS.values()) + " |")
        lines.append("")
    return "\n".join(lines)
