"""``RUN_DIR/report.html``: one self-contained page (plots inlined as PNG) with the training curves,
the evaluation tables and the responses side by side. Every string from data is escaped."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from html import escape
from pathlib import Path

from rlhf.outputs import write_run_file

CURVES = [  # (title, stage, metric names)
    ("SFT loss", "sft", ["sft/loss"]),
    ("SFT learning rate", "sft", ["sft/lr"]),
    ("Reward-model loss and accuracy", "reward", ["reward/loss", "reward/accuracy"]),
    ("PPO reward-model score", "ppo", ["objective/scores"]),
    ("PPO KL to SFT (nats per response)", "ppo", ["objective/kl"]),
    ("PPO losses", "ppo", ["ppo/loss/policy", "ppo/loss/value", "ppo/loss/ptx"]),
    ("PPO policy", "ppo", ["ppo/policy/entropy", "ppo/policy/clipfrac", "ppo/policy/approxkl"]),
    ("PPO rollouts", "ppo", ["rollout/response_length", "rollout/eos_fraction"]),
]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    # JSON lines end at "\n" alone: splitlines() would also cut at U+2028 or U+0085 inside a string
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()] if path.exists() else []


def curve_panels(rows: list[dict]) -> list[tuple[str, list[tuple[str, list[tuple[int, float]]]]]]:
    """[(panel title, [(series label, [(step, value)])])], one series per run of a stage and metric."""
    runs = list(dict.fromkeys((r["stage"], r.get("run", r["stage"])) for r in rows))
    panels = []
    for title, stage, names in CURVES:
        series = []
        for run in [run for kind, run in runs if kind == stage]:
            label = f"{run}: " if len([r for k, r in runs if k == stage]) > 1 else ""
            series += [(label + name, [(r["step"], r[name]) for r in rows if r.get("run", r["stage"]) == run
                                       and isinstance(r.get(name), (int, float))]) for name in names]
        panels.append((title, series))
    panels = [(title, [(n, pts) for n, pts in series if pts]) for title, series in panels]
    return [(title, series) for title, series in panels if series]


def curves_png(rows: list[dict]) -> str | None:
    """All training curves in one figure, as a base64 PNG (None when there is nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(rows)
    if not panels:
        return None
    columns = 2
    figure, axes = plt.subplots((len(panels) + 1) // columns, columns, figsize=(11, 2.8 * ((len(panels) + 1) // 2)),
                                squeeze=False)
    for axis, (title, series) in zip(axes.flat, panels):
        for name, points in series:
            axis.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1.2)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    return figure_png(figure)


def figure_png(figure) -> str:
    """A matplotlib figure as a base64 PNG for an ``<img>`` (the figure is closed)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3f}"
        return escape("–" if value is None else str(value))

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def health_panel(rows: list[dict]) -> str:
    """PPO's collapse and reward-hacking alerts (:mod:`rlhf.train.health`) and the updates skipped
    for a non-finite loss or gradient, by run and step."""
    alerts = [[r.get("run", r["stage"]), r["step"], alert] for r in rows for alert in r.get("health/alerts") or []]
    skipped = {}
    for r in rows:
        if isinstance(r.get("train/skipped_steps"), (int, float)):
            skipped[r.get("run", r["stage"])] = int(r["train/skipped_steps"])
    lines = [_table(["run", "step", "alert"], alerts) if alerts else
             "<p>No alerts: KL, entropy, repetition, response length and the share of responses that end "
             "stayed within <code>ppo.health</code>'s thresholds.</p>"]
    lines += [f"<p>{escape(run)}: {count} update(s) skipped for a non-finite loss or gradient.</p>"
              for run, count in skipped.items() if count]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.response{white-space:pre-wrap;max-width:360px}
img{max-width:100%}h1{font-size:1.6em}"""


def markdown_inline(text: str) -> str:
    """A note's **bold** and `code` as HTML, everything else escaped."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def result_section(results: dict) -> list[str]:
    """The report's opening: the held-out result with its intervals, every model's metrics, and base /
    SFT / PPO side by side on harmful and ordinary prompts."""
    from rlhf.eval.refusal import is_refusal
    from rlhf.eval.report import headline, side_by_side_prompts

    parts = []
    if "reward" in results:
        header, rows, notes = headline(results)
        parts += ["<h2>Result on held-out prompts</h2>", _table(header, rows),
                  "<ul>" + "".join(f"<li>{markdown_inline(note)}</li>" for note in notes) + "</ul>"]
    policies = results.get("policies", {})
    metrics = sorted({k for m in policies.values() for k in m})
    parts += ["<h2>Every measure</h2>", _table(["model", *metrics],
                                                [[name, *[m.get(k) for k in metrics]] for name, m in policies.items()])]
    samples = results.get("samples", {})
    shown = [n for n in ("base", "sft", "ppo") if n in samples]
    if shown:
        rows = "".join("<tr><td>" + escape(p) + "</td>" + "".join(
            f"<td class='response'>{'🛑 ' if is_refusal(samples[n][p]) else ''}{escape(samples[n][p])}</td>"
            for n in shown) + "</tr>" for p in side_by_side_prompts(10) if all(p in samples[n] for n in shown))
        parts += ["<h2>Responses side by side</h2><table><thead><tr><th>prompt</th>"
                  + "".join(f"<th>{escape(n)}</th>" for n in shown) + f"</tr></thead><tbody>{rows}</tbody></table>",
                  "<p>🛑 = detected as a refusal.</p>"]
    return parts


def build_html(run_dir: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf report: {escape(str(run_dir))}</title>",
             f"<style>{STYLE}</style></head><body><h1>RLHF run report</h1><p><code>{escape(str(run_dir))}</code></p>"]
    eval_path = run_dir / "eval.json"
    results = json.loads(eval_path.read_text()) if eval_path.exists() else None
    if results:
        parts += result_section(results)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        rows = [[stage, key, value] for stage, metrics in summary.items() if isinstance(metrics, dict)
                and stage != "eval" for key, value in metrics.items() if isinstance(value, (int, float))]
        parts += ["<h2>Stages</h2>", _table(["stage", "metric", "value"], rows)]
    rows = read_metrics(run_dir)
    png = curves_png(rows)
    if png:
        parts += ["<h2>Training curves</h2>", f"<img alt='training curves' src='data:image/png;base64,{png}'>"]
    if rows:
        parts += ["<h2>Health</h2>", health_panel(rows)]
    parts += all_responses_section(run_dir, results or {})
    parts += overoptimization_section(run_dir)
    parts.append("</body></html>")
    return "\n".join(parts)


def all_responses_section(run_dir: Path, results: dict) -> list[str]:
    """Every evaluated prompt with each policy's response and, under it, each reward model's score of
    that response: from ``samples.jsonl`` (the fixed prompts, the held-out dialogues, the benign
    requests), or from eval.json's fixed-prompt samples for a run evaluated before that file existed."""
    path = run_dir / "samples.jsonl"
    if path.exists():
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    else:
        samples = results.get("samples") or {}
        prompts = list(dict.fromkeys(p for texts in samples.values() for p in texts))
        lines = [{"category": "", "prompt": [{"role": "user", "content": p}],
                  "responses": {n: texts[p] for n, texts in samples.items() if p in texts}} for p in prompts]
    if not lines:
        return []
    names = list(dict.fromkeys(n for line in lines for n in line["responses"]))
    scorers = list(dict.fromkeys(k for line in lines for k in line
                                 if k not in ("category", "draw", "prompt", "responses")))
    draws = len({line.get("draw", 0) for line in lines})  # eval.samples: a line per prompt and draw

    def category_cell(line: dict) -> str:
        return escape(line["category"]) + (f"<br><small>draw {line['draw']}</small>" if "draw" in line else "")

    def prompt_cell(messages: list[dict]) -> str:
        if len(messages) == 1:
            return escape(messages[0]["content"])
        return "\n\n".join(f"{escape(m['role'])}: {escape(m['content'])}" for m in messages)

    def response_cell(line: dict, name: str) -> str:
        if name not in line["responses"]:
            return "–"
        scores = " · ".join(f"{escape(s)} {line[s][name]:.3f}" for s in scorers if name in line.get(s, {}))
        return escape(line["responses"][name]) + (f"<br><small>{scores}</small>" if scores else "")

    counts = ", ".join(f"{n} {escape(c)}" for c, n in Counter(line["category"] for line in lines
                                                              if line.get("draw", 0) == 0).items() if c)
    prompts = sum(line.get("draw", 0) == 0 for line in lines)
    rows = "".join(f"<tr><td>{category_cell(line)}</td><td class='response'>{prompt_cell(line['prompt'])}</td>"
                   + "".join(f"<td class='response'>{response_cell(line, n)}</td>" for n in names) + "</tr>"
                   for line in lines)
    roles = {"reward": "the proxy PPO optimised", "judge": "the independent judge"}
    legend = "; ".join(f"<code>{escape(s)}</code>: {roles.get(s, 'a reward model')}" for s in scorers)
    return ["<h2>All responses</h2>",
            f"<p>{prompts} prompts{': ' + counts if counts else ''}"
            f"{f', each sampled {draws} times (a row per draw)' if draws > 1 else ''}. Under each response, each "
            f"reward model's normalised score of it ({legend}); – where a model was not sampled. The same lines are "
            "in <code>samples.jsonl</code>.</p>" if path.exists() else f"<p>{len(lines)} fixed prompts.</p>",
            "<table><thead><tr><th>category</th><th>prompt</th>" + "".join(f"<th>{escape(n)}</th>" for n in names)
            + f"</tr></thead><tbody>{rows}</tbody></table>"]


def overoptimization_section(run_dir: Path) -> list[str]:
    """``rlhf eval overoptimization``'s results: the methods side by side under the gold judge, and
    gold and proxy score against √KL with Gao et al.'s fitted forms (nothing when it has not run)."""
    from rlhf.eval.overoptimization import RESULT_FILE, fit_lines, plot

    path = run_dir / RESULT_FILE
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    rows = [[r["method"], r["kl"], r["gold"], r["proxy"],
             f"{r['win_rate']['win_rate']:.3f} [{r['win_rate']['low']:.3f}, {r['win_rate']['high']:.3f}]",
             r["wall_time_s"]] for r in result["table"]]
    return ["<h2>Methods side by side</h2>",
            f"<p>On {result['prompts']} held-out prompts; the gold judge is <code>{escape(result['gold_model'])}"
            "</code> (trained on every training comparison, never optimised against). KL to SFT in nats per "
            "response; best-of-n's KL is log n − (n − 1)/n.</p>",
            _table(["method", "KL to SFT", "gold score", "proxy score", "gold win rate vs SFT [95 % CI]",
                    "wall time (s)"], rows),
            "<h2>Reward over-optimisation</h2>",
            f"<img alt='gold and proxy score against sqrt KL' src='data:image/png;base64,{plot(result)}'>",
            "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in fit_lines(result["fits"])) + "</ul>"]


def write_html_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run folder")
    return write_run_file(run_dir / "report.html", build_html(run_dir))
