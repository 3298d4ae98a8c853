"""Reward over-optimisation (Gao, Schulman & Hilton 2022) and the methods side by side.

A *gold* reward model — trained on every training comparison, longer than the run's (proxy) reward
model, and never optimised against — judges what the policies of a run write on held-out prompts:
SFT, PPO along training (its ``snapshot_every`` snapshots, then the final policy), every other
policy stage of the run (PPO without ptx, RLOO, DPO) and best-of-n from SFT for several n. Gold and
proxy scores are measured against d = √KL(π ‖ π_SFT), and Gao et al.'s forms are fitted to the
gold score's gain over SFT:

    RL:          R(d) = d·(α − β·log d)     peak at d* = exp(α/β − 1)
    best-of-n:   R(d) = d·(α − β·d)         peak at d* = α / (2β)

Both are linear in (α, β), so the fit is least squares. KL of a sampled policy is the mean over
prompts of Σ_t log π(y_t) − log π_SFT(y_t) on its own samples; of best-of-n, log n − (n − 1)/n.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from rlhf.bestofn import best_of_n, best_of_n_kl
from rlhf.checkpoint import METADATA_FILE, is_finished, snapshot_folders
from rlhf.data.collate import encode_prompts, split_records
from rlhf.data.readers import read_prompts
from rlhf.eval.winrate import win_rate
from rlhf.outputs import write_run_file

logger = logging.getLogger(__name__)

POLICY_STAGES = ("ppo", "ppo-noptx", "rloo", "dpo")  # folders of a run judged beside SFT, when present
RESULT_FILE = "overoptimization.json"


# ---- the fitted forms (pure) ------------------------------------------------------------
def fit_rl(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """Least-squares (α, β) of gain = d·(α − β·log d) over points with d > 0."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    keep = d > 0
    if keep.sum() < 2:
        raise ValueError("fitting d(α − β log d) needs at least 2 points with KL > 0")
    design = np.stack([d[keep], -d[keep] * np.log(d[keep])], 1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain[keep], rcond=None)
    return float(alpha), float(beta)


def fit_best_of_n(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """Least-squares (α, β) of gain = d·(α − β·d) over points with d > 0."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    keep = d > 0
    if keep.sum() < 2:
        raise ValueError("fitting d(α − β d) needs at least 2 points with KL > 0")
    design = np.stack([d[keep], -d[keep] ** 2], 1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain[keep], rcond=None)
    return float(alpha), float(beta)


def rl_peak(alpha: float, beta: float) -> float | None:
    """d at which d(α − β log d) is highest: exp(α/β − 1); None when β ≤ 0 (no peak: still rising)."""
    return math.exp(alpha / beta - 1) if beta > 0 and alpha / beta - 1 < 50 else None


def best_of_n_peak(alpha: float, beta: float) -> float | None:
    """d at which d(α − β d) is highest: α / (2β); None when β ≤ 0 (still rising) or α ≤ 0 (falling
    from the start: the peak is SFT itself)."""
    return alpha / (2 * beta) if beta > 0 and alpha > 0 else None


# ---- measuring ---------------------------------------------------------------------------
def held_out_prompts(run_dir: Path, limit: int) -> list:
    """The PPO stage's held-out prompts (its test split; else its validation split), as it split them,
    that fit its ``max_prompt_length`` in the SFT model's tokens (PPO's evaluation skips the others too)."""
    from rlhf.data.collate import encode_prompt
    from rlhf.data.records import DataError
    from rlhf.models import load_tokenizer

    meta = json.loads((run_dir / "ppo" / METADATA_FILE).read_text())
    config = meta["config"]
    prompts = [p for path in config["prompts"] for p in read_prompts(path, config.get("skip_invalid", False))]
    splits = split_records(prompts, config["seed"], config["valid_fraction"], config["test_fraction"])
    tokenizer = load_tokenizer(str(run_dir / "sft"))
    chosen = [p for p in splits["test"] or splits["valid"]
              if len(encode_prompt(tokenizer, p.prompt)) <= config["max_prompt_length"]]
    if not chosen:
        raise DataError(f"{run_dir / 'ppo'}: no held-out prompt of at most max_prompt_length "
                        f"({config['max_prompt_length']}) tokens (valid_fraction and test_fraction are 0, or every "
                        "held-out prompt is longer)")
    return chosen[:limit]


@torch.no_grad()
def sample_and_measure(policy_dir: str, sft_dir: str, proxy_dir: str, prompts: list, max_new_tokens: int,
                       temperature: float, seed: int, batch_size: int = 16) -> dict:
    """One response per prompt record from ``policy_dir``: its texts, the proxy's scores and each
    response's log-ratio Σ_t log π − log π_SFT (the per-prompt KL estimate)."""
    from rlhf.models import load_causal_lm, load_scalar_model, load_tokenizer
    from rlhf.rollout import RolloutEngine
    from rlhf.train.common import inference_autocast, inference_dtype

    tokenizer = load_tokenizer(policy_dir)
    policy = load_causal_lm(policy_dir, tokenizer=tokenizer).eval()
    reference = policy if policy_dir == sft_dir else load_causal_lm(sft_dir, tokenizer=tokenizer).eval()
    proxy = load_scalar_model(proxy_dir, load_tokenizer(proxy_dir), trained=True).eval()
    engine = RolloutEngine(policy, reference, None, proxy, tokenizer, max_new_tokens=max_new_tokens,
                           temperature=temperature, no_eos_score=None, autocast=inference_autocast,
                           generator=torch.Generator().manual_seed(seed), dtype=inference_dtype())
    encoded = encode_prompts(tokenizer, prompts, 10**9, "skip")  # no limit: one response per prompt
    texts, proxy_scores, kls = [], [], []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = engine.rollout(*zip(*chunk))
        kls += ((batch.logprobs - batch.ref_logprobs) * batch.response_mask).sum(1).tolist()
        proxy_scores += batch.scores.tolist()
        texts += [tokenizer.decode(row[mask.bool()], skip_special_tokens=True).strip()
                  for row, mask in zip(batch.response_ids, batch.response_mask)]
    return {"responses": texts, "proxy": proxy_scores, "kl": kls}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _wall_time(folder: Path) -> float | None:
    try:
        return json.loads((folder / METADATA_FILE).read_text()).get("wall_time_s")
    except (OSError, ValueError):
        return None


def measure_run(run_dir: Path, gold_dir: Path, prompts: list, ns: list[int], max_new_tokens: int,
                temperature: float, seed: int, batch_size: int = 16, progress=lambda name: None) -> dict:
    """Sample every policy of the run (SFT, PPO's snapshots, the policy stages) and best-of-n from SFT
    on ``prompts``; score with the proxy and the gold model. Returns points (one per policy) and the
    SFT baseline's per-prompt gold scores."""
    from rlhf.eval.run import RewardScorer

    sft, proxy = str(run_dir / "sft"), str(run_dir / "reward")
    gold_model = RewardScorer(gold_dir)
    conversations = [p.prompt for p in prompts]
    policies = [("sft", "sft", 0, sft)]
    final = json.loads((run_dir / "ppo" / METADATA_FILE).read_text())["metrics"].get("steps", math.inf)
    policies += [("ppo", f"ppo step {step}", step, str(folder)) for step, folder in snapshot_folders(run_dir / "ppo")
                 if step <= final]  # a forced resume with fewer steps may have left later ones
    policies += [(name, name, None, str(run_dir / name)) for name in POLICY_STAGES if is_finished(run_dir / name)]
    points, baseline = [], None
    for method, label, step, folder in policies:
        progress(label)
        measured = sample_and_measure(folder, sft, proxy, prompts, max_new_tokens, temperature, seed, batch_size)
        gold = gold_model(conversations, measured["responses"], batch_size)
        if baseline is None:
            baseline = gold
        kl = max(_mean(measured["kl"]), 0.0) if method != "sft" else 0.0
        points.append({"method": method, "label": label, "step": step, "kl": kl, "d": math.sqrt(kl),
                       "proxy": _mean(measured["proxy"]), "gold": _mean(gold),
                       "win_rate_vs_sft": win_rate(gold, baseline, seed=seed),
                       "wall_time_s": _wall_time(Path(folder)) if method != "sft" else _wall_time(run_dir / "sft"),
                       "samples": dict(zip([_prompt_text(c) for c in conversations[:3]], measured["responses"][:3]))})
    progress("best-of-n")
    started = time.time()
    rows, _ = best_of_n(sft, proxy, conversations, ns, max_new_tokens, temperature, seed, batch_size)
    sampling_time = time.time() - started
    for n in ns:
        best = [row["best"][str(n)] for row in rows]
        gold = gold_model(conversations, [b["response"] for b in best], batch_size)
        kl = best_of_n_kl(n)
        points.append({"method": "best-of-n", "label": f"best-of-{n}", "n": n, "kl": kl, "d": math.sqrt(kl),
                       "proxy": _mean([b["score"] for b in best]), "gold": _mean(gold),
                       "win_rate_vs_sft": win_rate(gold, baseline, seed=seed),
                       "wall_time_s": round(sampling_time * n / max(ns), 1)})  # its share of the samples drawn
    return {"points": points}


def _prompt_text(conversation: list) -> str:
    return conversation[-1]["content"] if conversation else ""


def fits(points: list[dict]) -> dict:
    """Gao et al.'s forms fitted to the gold gain over SFT: ``rl`` on SFT and PPO's snapshots (and the
    final policy), ``best_of_n`` on best-of-n; each with α, β, the peak d and its KL (None where the
    fit has no peak), and the measured point with the highest gold score."""
    sft_gold = next(p["gold"] for p in points if p["method"] == "sft")
    families = {"rl": [p for p in points if p["method"] in ("sft", "ppo")],
                "best_of_n": [p for p in points if p["method"] == "best-of-n"]}
    result = {}
    for name, chosen in families.items():
        d = np.array([p["d"] for p in chosen])
        gain = np.array([p["gold"] - sft_gold for p in chosen])
        try:
            alpha, beta = (fit_rl if name == "rl" else fit_best_of_n)(d, gain)
        except ValueError as error:
            result[name] = {"error": str(error)}
            continue
        peak = (rl_peak if name == "rl" else best_of_n_peak)(alpha, beta)
        best = max(chosen, key=lambda p: p["gold"])
        result[name] = {"alpha": alpha, "beta": beta, "peak_d": peak, "peak_kl": None if peak is None else peak ** 2,
                        "best_measured": {"label": best["label"], "kl": best["kl"], "gold": best["gold"]}}
    return result


def plot(result: dict) -> str:
    """Gold and proxy score (gain over SFT) against d = √KL, PPO and best-of-n, the fitted gold curves
    and their peaks: a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlhf.eval.html_report import figure_png

    points, fitted = result["points"], result["fits"]
    sft = next(p for p in points if p["method"] == "sft")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, (family, methods, title) in zip(axes, (("rl", ("sft", "ppo"), "PPO along training"),
                                                     ("best_of_n", ("sft", "best-of-n"), "best-of-n from SFT"))):
        chosen = sorted((p for p in points if p["method"] in methods), key=lambda p: p["d"])
        d = [p["d"] for p in chosen]
        axis.plot(d, [p["gold"] - sft["gold"] for p in chosen], "o-", label="gold (measured)")
        axis.plot(d, [p["proxy"] - sft["proxy"] for p in chosen], "s--", alpha=0.7, label="proxy (measured)")
        fit = fitted.get(family, {})
        if "alpha" in fit and d[-1] > 0:  # the fitted curve over the measured range, and up to a near peak
            grid = np.linspace(1e-3, max(d[-1], min(fit["peak_d"] or 0, 2 * d[-1])) * 1.1, 200)
            curve = grid * (fit["alpha"] - fit["beta"] * (np.log(grid) if family == "rl" else grid))
            axis.plot(grid, curve, ":", color="black", label=f"gold fit α={fit['alpha']:.3g}, β={fit['beta']:.3g}")
            if fit["peak_d"] is not None and fit["peak_d"] <= grid[-1]:
                axis.axvline(fit["peak_d"], color="red", alpha=0.5, label=f"gold peak: KL {fit['peak_kl']:.3g} nats")
        axis.set_title(title)
        axis.set_xlabel("d = √KL(π ‖ π_SFT)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("score − SFT's score")
    return figure_png(figure)


def fit_lines(fitted: dict) -> list[str]:
    """The fits in words, as the command prints them and the report lists them."""
    lines = []
    for family, form in (("rl", "PPO: gold gain = d(α − β log d)"), ("best_of_n", "best-of-n: gold gain = d(α − β d)")):
        fit = fitted.get(family, {})
        if "alpha" not in fit:
            lines.append(f"{form}: not fitted ({fit.get('error', 'no points')})")
            continue
        if fit["peak_kl"] is not None:
            peak = f"gold peaks at KL {fit['peak_kl']:.3g} nats (d = {fit['peak_d']:.3g})"
        elif fit["beta"] <= 0:
            peak = "no peak within the form (the gold score is still rising)"
        else:
            peak = "the gold score falls from the start (no gain over SFT)"
        best = fit["best_measured"]
        lines.append(f"{form}: α = {fit['alpha']:.4g}, β = {fit['beta']:.4g}; {peak}; best measured "
                     f"{best['label']} (KL {best['kl']:.3g}, gold {best['gold']:+.3f})")
    return lines


def comparison_rows(points: list[dict]) -> list[dict]:
    """One row per method for the report: method, KL to SFT, gold, proxy, gold win rate vs SFT
    (95 % interval), wall time. PPO's snapshots stay on the curve; its final policy is the row."""
    rows = []
    for p in points:
        if p["method"] == "ppo" and p.get("step") is not None:
            continue
        name = {"ppo": "PPO-ptx" if _has_ptx(p) else "PPO", "ppo-noptx": "PPO (no ptx)", "rloo": "RLOO",
                "dpo": "DPO", "sft": "SFT"}.get(p["method"], p["label"])
        rows.append({"method": name, "kl": p["kl"], "gold": p["gold"], "proxy": p["proxy"],
                     "win_rate": p["win_rate_vs_sft"], "wall_time_s": p.get("wall_time_s")})
    return rows


def _has_ptx(point: dict) -> bool:
    return bool(point.get("ptx_coef"))


GOLD_FOLDER = "gold-reward"


def train_gold_reward(run_dir: Path, longer: float = 2.0) -> Path:
    """The gold judge of a run: its reward stage's settings on every training comparison (no
    ``max_examples`` cap; the same seed and split, so the held-out comparisons stay held out), trained
    ``longer`` times as many epochs (or steps), from the run's SFT model, into ``RUN_DIR/gold-reward``.
    Skipped when that folder is finished already."""
    import yaml

    from rlhf.config import PipelineConfig
    from rlhf.pipeline import data_paths, stage_configs
    from rlhf.train.reward import train_reward

    target = run_dir / GOLD_FOLDER
    if is_finished(target):
        logger.info("gold reward model: finished earlier in %s", target)
        return target
    config = PipelineConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    proxy = stage_configs(config, run_dir, data_paths(config, run_dir))["reward"]
    gold = proxy.model_validate({**proxy.model_dump(), "output_dir": str(target), "max_examples": None,
                                 "epochs": max(1, round(proxy.epochs * longer)),
                                 "max_steps": None if proxy.max_steps is None else round(proxy.max_steps * longer)})
    train_reward(gold)
    return target


def overoptimization(run_dir: str | Path, gold_dir: str | Path, prompts: int = 64,
                     ns: tuple[int, ...] = (1, 2, 4, 8, 16), max_new_tokens: int = 64, temperature: float = 1.0,
                     seed: int = 0, batch_size: int = 16) -> dict:
    """Measure and fit into ``RUN_DIR/overoptimization.json``; the report (written again) plots it."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    chosen = held_out_prompts(run_dir, prompts)
    bar = tqdm(desc="overoptimization", total=None)
    measured = measure_run(run_dir, Path(gold_dir), chosen, sorted(set(ns)), max_new_tokens, temperature, seed,
                           batch_size, progress=lambda name: (bar.set_postfix_str(name), bar.update()))
    bar.close()
    points = measured["points"]
    ptx = json.loads((run_dir / "ppo" / METADATA_FILE).read_text())["config"].get("ptx_coef", 0)
    for p in points:
        if p["method"] == "ppo":
            p["ptx_coef"] = ptx
    fitted = fits(points)
    result = {"gold_model": str(gold_dir), "prompts": len(chosen), "ns": sorted(set(ns)),
              "max_new_tokens": max_new_tokens, "temperature": temperature, "points": points, "fits": fitted,
              "table": comparison_rows(points)}
    write_run_file(run_dir / RESULT_FILE, json.dumps(result, indent=2, ensure_ascii=False))
    from rlhf.eval.html_report import write_html_report

    write_html_report(run_dir)
    return result
