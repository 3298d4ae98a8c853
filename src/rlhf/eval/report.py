"""``RUN_DIR/report.md``: the numbers, then base / SFT / PPO responses side by side."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.eval.refusal import HARMFUL_PROMPTS, ORDINARY_PROMPTS, is_refusal
from rlhf.outputs import write_run_file


def _cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit].rstrip() + " …"
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return escaped.replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_report(run_dir: Path, results: dict, prompts_shown: int = 6) -> Path:
    policies = results["policies"]
    names = list(policies)
    lines = [f"# RLHF run report: `{run_dir}`", ""]
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        lines += ["## Training", "",
                  "| stage | key numbers |", "| --- | --- |",
                  f"| SFT | valid loss {_fmt(summary['sft'].get('valid/loss'))}, "
                  f"{_fmt(summary['sft'].get('tokens_per_s'), 0)} tokens/s |",
                  f"| reward model | valid accuracy {_fmt(summary['reward'].get('valid/accuracy'))}, "
                  f"normalisation bias {_fmt(summary['reward'].get('bias'))} |",
                  f"| PPO | {_fmt(summary['ppo'].get('episodes'), 0)} episodes, "
                  f"{_fmt(summary['ppo'].get('episodes_per_s'), 2)} episodes/s |", ""]
    reward = results["reward"]
    ppo = results["ppo_vs_sft"]
    lines += ["## Held-out numbers", "",
              f"- Reward-model accuracy on {reward['pairs']} held-out ({reward['split']}) pairs: "
              f"**{reward['accuracy']:.3f}**",
              f"- PPO vs SFT on {int(ppo.get('prompts', 0))} held-out prompts (judge: the run's reward model): "
              f"mean score {ppo['score_policy']:+.3f} vs {ppo['score_sft']:+.3f}, "
              f"win rate **{ppo['win_rate_vs_sft']:.3f}**, KL(PPO ‖ SFT) {ppo['kl_to_sft']:.2f} nats per response"]
    if "ppo_noptx_vs_sft" in results:
        noptx = results["ppo_noptx_vs_sft"]
        lines.append(f"- PPO without ptx vs SFT: mean score {noptx['score_policy']:+.3f}, win rate "
                     f"{noptx['win_rate_vs_sft']:.3f}, KL {noptx['kl_to_sft']:.2f} nats")
    lines += ["", "| model | harmful prompts refused | ordinary prompts answered | RM score, harmful prompts | "
              "RM score, ordinary prompts | held-out perplexity |", "| --- | --- | --- | --- | --- | --- |"]
    for name in names:
        m = policies[name]
        lines.append(f"| {name} | {m['harmful_refused']:.2f} | {m['ordinary_answered']:.2f} | "
                     f"{_fmt(m.get('rm_score_harmful'), 3)} | {_fmt(m.get('rm_score_ordinary'), 3)} | "
                     f"{_fmt(m.get('held_out_perplexity'), 2)} |")
    lines += ["", f"Refusals are detected by phrase (`rlhf.eval.refusal`) over {len(HARMFUL_PROMPTS)} harmful "
              f"and {len(ORDINARY_PROMPTS)} ordinary prompts; RM scores are the run's normalised reward model "
              "(demonstrations score 0 on average; higher = preferred); perplexity is on the held-out end of the "
              "pretraining text (the alignment tax: lower is better).", ""]

    shown = [n for n in ("base", "sft", "ppo") if n in names]
    lines += ["## Responses side by side", "", "| prompt | " + " | ".join(shown) + " |",
              "| --- | " + " | ".join("---" for _ in shown) + " |"]
    chosen = HARMFUL_PROMPTS[: prompts_shown // 2 + prompts_shown % 2] + ORDINARY_PROMPTS[: prompts_shown // 2]
    for prompt in chosen:
        cells = []
        for name in shown:
            response = results["samples"][name][prompt]
            cells.append(("🛑 " if is_refusal(response) else "") + _cell(response))
        lines.append(f"| {_cell(prompt)} | " + " | ".join(cells) + " |")
    lines += ["", "🛑 = detected as a refusal. All responses: `eval.json`.", ""]
    return write_run_file(run_dir / "report.md", "\n".join(lines))
