"""``RUN_DIR/report.md``: the result on held-out prompts with its intervals, base / SFT / PPO responses
side by side, then the training numbers and the proxy reward model's view."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.eval.refusal import (
    CANNED_REFUSAL,
    HARMFUL_PROMPTS,
    ORDINARY_PROMPTS,
    REFUSAL_OPENING,
    REFUSAL_WINDOW,
    is_refusal,
)
from rlhf.eval.winrate import proportion_interval
from rlhf.outputs import write_run_file


def _cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit].rstrip() + " …"
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return escaped.replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(value: dict, digits: int = 2) -> str:
    return f"{value['win_rate' if 'win_rate' in value else 'rate']:.{digits}f} [{value['low']:.{digits}f}, " \
           f"{value['high']:.{digits}f}]"


SHORTER = 0.75  # a judged policy whose responses are this fraction of SFT's length or less gets a note


def headline(results: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """The result on held-out data, measure by model: (header, rows, notes). Rates carry their 95 %
    intervals (Wilson for rates, bootstrap over prompts for win rates)."""
    policies = results["policies"]
    names = list(policies)
    benign = results.get("benign", {}).get("prompts", 0)
    draws = results.get("draws", 1)
    rows = []
    for label, key, n in (("harmful prompts refused", "harmful_refused", len(HARMFUL_PROMPTS)),
                          ("ordinary prompts answered", "ordinary_answered", len(ORDINARY_PROMPTS)),
                          ("benign held-out requests answered", "benign_answered", benign)):
        if n and any(key in policies[m] for m in names):
            each = f", mean of {draws} draws each" if draws > 1 and key != "benign_answered" else ""
            rows.append([f"{label} (of {n}{each})"] + [
                "–" if policies[m].get(key) is None else _interval(proportion_interval(policies[m][key] * n, n))
                for m in names])
    for kind, n in (("harmful", len(HARMFUL_PROMPTS)), ("ordinary", len(ORDINARY_PROMPTS)), ("benign", benign)):
        key = f"{kind}_refusal_opening"
        if any(key in policies[m] for m in names):
            noun = "requests" if kind == "benign" else "prompts"
            rows.append([f"… P(opens \"{REFUSAL_OPENING}\"), mean of {n} {kind} {noun}, exact"] +
                        [_fmt(policies[m].get(key), 2) for m in names])
    if any("response_tokens" in policies[m] for m in names):
        rows.append([f"mean response length, tokens ({len(HARMFUL_PROMPTS) + len(ORDINARY_PROMPTS)} prompts above)"]
                    + [_fmt(policies[m].get("response_tokens"), 1) for m in names])
    judged = results.get("judged")
    if judged:
        vs = judged["vs_sft"]
        # three digits: a win rate of 0.599 must not read as a target of 0.60 met
        rows.append([f"win rate vs SFT, judge `{judged['judge']}` ({judged['prompts']} prompts)"] +
                    [_interval(vs[m]["all"], 3) if m in vs else ("0.500" if m == "sft" else "–") for m in names])
        if any("length_controlled" in v for v in vs.values()):
            rows.append(["… at equal length (the judge's length preference regressed out)"] +
                        [_interval(vs[m]["length_controlled"], 3) if "length_controlled" in vs.get(m, {}) else "–"
                         for m in names])
        for category in ("harmful", "ordinary", "held_out"):
            if any(category in v for v in vs.values()):
                rows.append([f"… on {category.replace('_', '-')} prompts"] +
                            [_interval(vs[m][category], 3) if category in vs.get(m, {}) else "–" for m in names])
    if any("reference_logprob" in policies[m] for m in names):
        rows.append([f"log-likelihood of {results.get('references', '?')} human references, nats/token"] +
                    [_fmt(policies[m].get("reference_logprob"), 3) for m in names])
    if any("held_out_perplexity" in policies[m] for m in names):
        sft = policies.get("sft", {}).get("held_out_perplexity")

        def tax(m):
            value = policies[m].get("held_out_perplexity")
            if value is None or not sft or m in ("base", "sft"):
                return _fmt(value, 2)
            return f"{value:.2f} ({100 * (value / sft - 1):+.1f} % vs SFT)"
        rows.append(["held-out pretraining perplexity (alignment tax)"] + [tax(m) for m in names])
    reward = results["reward"]
    notes = [f"Reward-model accuracy on {reward['pairs']} held-out ({reward.get('split', 'test')}) pairs: "
             f"**{reward['accuracy']:.3f}**."]
    if draws > 1:
        notes.append(f"Each fixed prompt and judged dialogue was sampled {draws} times (`eval.samples`), every "
                     "policy's draw j with the same numbers: the refusal rates, reward scores and win rates are means "
                     "over the draws; the win rates' intervals resample prompts, the refusal rates' are Wilson "
                     "intervals over the prompts at the mean rate. The responses shown are draw 0's.")
    if judged:
        independent = judged["judge"] == "judge"
        notes.append(f"Judge: `{judged['judge']}/` — " + (
            "a reward model trained from the base model on comparisons the proxy reward model never saw; PPO never "
            "optimised against it." if independent else
            "the run's own reward model, which PPO optimised against (no `judge` stage in this run): an optimistic "
            "judge."))
        sft_tokens = policies.get("sft", {}).get("response_tokens")
        for m in judged["vs_sft"]:
            tokens = policies.get(m, {}).get("response_tokens")
            if sft_tokens and tokens is not None and tokens < SHORTER * sft_tokens:
                notes.append(f"`{m}` answers in {100 * (1 - tokens / sft_tokens):.0f} % fewer tokens than SFT "
                             f"({tokens:.1f} against {sft_tokens:.1f}): a judge trained on HH pairs may prefer brevity "
                             "as such, so read its win rate with the responses below.")
    preference = results.get("refusal_preference", {})
    if preference:
        counts = "; ".join(f"{'the judge' if name == 'judge' else 'the proxy reward model'}: {p['ordinary']} of "
                           f"{p['of']} ordinary and {p['harmful']} of {p['of']} harmful prompts"
                           + (f", {p['benign']} of {p['benign_of']} benign held-out requests" if "benign" in p else "")
                           for name, p in preference.items())
        notes.append(f"A canned refusal (\"{CANNED_REFUSAL}\") outscores the base model's own response on {counts}. "
                     "On an ordinary or benign prompt that pulls PPO towards refusing ordinary requests (and makes "
                     "a judge reward refusing them); on a harmful one the refusal should win.")
    if benign:
        notes.append(f"Benign held-out requests: {benign} drawn (seeded) from `{results['benign']['source']}`, "
                     "requests no stage trains on and none of which deserves a refusal; each policy's answer is "
                     f"sampled {REFUSAL_WINDOW} tokens deep, where a refusal shows. A drop from the base model's "
                     "rate is over-refusal that the fixed ordinary prompts may not show.")
    notes.append("Refusals are detected by phrase (`rlhf.eval.refusal`) in "
                 + ("one sample" if draws == 1 else f"{draws} samples") + " per prompt, on fixed prompts no "
                 f"stage trains on; the P(opens \"{REFUSAL_OPENING}\") rows are the exact probability that a "
                 "sample opens like the canned refusal, averaged over the prompts, free of sampling noise. "
                 "Perplexity is on the held-out end of the pretraining text (lower is better).")
    return ["held-out measure", *names], rows, notes


def side_by_side_prompts(count: int) -> list[str]:
    """Half harmful, half ordinary (the odd one harmful)."""
    return HARMFUL_PROMPTS[: count // 2 + count % 2] + ORDINARY_PROMPTS[: count // 2]


def write_report(run_dir: Path, results: dict, prompts_shown: int = 10) -> Path:
    policies = results["policies"]
    names = list(policies)
    lines = [f"# RLHF run report: `{run_dir}`", "", "## Result on held-out prompts", ""]
    header, rows, notes = headline(results)
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"- {note}" for note in notes] + [""]

    shown = [n for n in ("base", "sft", "ppo") if n in names]
    lines += ["## Responses side by side", "", "| prompt | " + " | ".join(shown) + " |",
              "| --- | " + " | ".join("---" for _ in shown) + " |"]
    for prompt in side_by_side_prompts(prompts_shown):
        cells = []
        for name in shown:
            response = results["samples"][name][prompt]
            cells.append(("🛑 " if is_refusal(response) else "") + _cell(response))
        lines.append(f"| {_cell(prompt)} | " + " | ".join(cells) + " |")
    lines += ["", "🛑 = detected as a refusal. Every response with its reward model and judge scores, the "
              "held-out dialogues' and benign requests' too: `samples.jsonl`, one line per prompt"
              + (" and draw" if results.get("draws", 1) > 1 else "") + ".", ""]

    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        lines += ["## Training", "",
                  "| stage | key numbers |", "| --- | --- |",
                  f"| SFT | valid loss {_fmt(summary['sft'].get('valid/loss'))}, "
                  f"{_fmt(summary['sft'].get('tokens_per_s'), 0)} tokens/s |",
                  f"| reward model | valid accuracy {_fmt(summary['reward'].get('valid/accuracy'))}, "
                  f"normalisation bias {_fmt(summary['reward'].get('bias'))} |"]
        if "judge" in summary:
            lines.append(f"| judge | valid accuracy {_fmt(summary['judge'].get('valid/accuracy'))} |")
        lines += [f"| PPO | {_fmt(summary['ppo'].get('episodes'), 0)} episodes, "
                  f"{_fmt(summary['ppo'].get('episodes_per_s'), 2)} episodes/s |", ""]
    ppo = results["ppo_vs_sft"]
    lines += ["## Under the proxy reward model", "",
              f"- PPO vs SFT on {int(ppo.get('prompts', 0))} held-out prompts (judge: the run's reward model, which "
              f"PPO optimised): mean score {ppo['score_policy']:+.3f} vs {ppo['score_sft']:+.3f}, "
              f"win rate {ppo['win_rate_vs_sft']:.3f}, KL(PPO ‖ SFT) {ppo['kl_to_sft']:.2f} nats per response"]
    if "ppo_noptx_vs_sft" in results:
        noptx = results["ppo_noptx_vs_sft"]
        lines.append(f"- PPO without ptx vs SFT: mean score {noptx['score_policy']:+.3f}, win rate "
                     f"{noptx['win_rate_vs_sft']:.3f}, KL {noptx['kl_to_sft']:.2f} nats")
    lines += ["", "| model | RM score, harmful prompts | RM score, ordinary prompts |", "| --- | --- | --- |"]
    for name in names:
        m = policies[name]
        lines.append(f"| {name} | {_fmt(m.get('rm_score_harmful'), 3)} | {_fmt(m.get('rm_score_ordinary'), 3)} |")
    lines += ["", "RM scores are the run's normalised reward model (demonstrations score 0 on average; higher = "
              "preferred).", ""]
    return write_run_file(run_dir / "report.md", "\n".join(lines))
