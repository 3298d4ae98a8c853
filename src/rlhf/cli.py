"""The ``rlhf`` command.

    rlhf sft      [--config FILE] [key=value ...]
    rlhf reward   [--config FILE] [key=value ...]
    rlhf ppo      [--config FILE] [key=value ...]
    rlhf dpo      [--config FILE] [key=value ...]   # DPO from the SFT model on the comparisons
    rlhf pipeline [--config FILE | --preset NAME] --run-dir DIR [section.key=value ...]
    rlhf generate --model DIR --prompt TEXT
    rlhf bestofn  --model DIR --reward-model DIR --prompts FILE --n 1 4 16 --output FILE
    rlhf report   RUN_DIR          # RUN_DIR/report.html
    rlhf data     curate|stats|convert FILE [...]
    rlhf eval     benchmarks|winrate|paper-samples [...]
    rlhf eval     overoptimization RUN_DIR [--gold DIR]   # gold vs proxy against √KL; methods side by side
    rlhf label    serve|add-user|load|export|agreement|audit|disable-user|enable-user|reset-password [...]
    rlhf config   STAGE            # print a stage's defaults as YAML, ready to edit
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from rlhf.arguments import COUNT, NON_NEGATIVE, POSITIVE_INT, Parser
from rlhf.config import STAGE_CONFIGS, ConfigError, dump_config, load_config, preset_config_path
from rlhf.data.formats import FORMATS
from rlhf.data.records import DataError, one_line
from rlhf.label.cli import add_label_commands, run_label


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config (repeatable; later files win)")
    parser.add_argument("--restart", action="store_true",
                        help="ignore the checkpoints of an interrupted run and start over")
    parser.add_argument("--force", action="store_true",
                        help="resume from a checkpoint even though the config differs from its own")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config field, e.g. learning_rate=1e-5 or ppo.kl_coef=0.05")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rlhf", description="InstructGPT: SFT → reward model → PPO-ptx")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for stage, text in (("sft", "supervised fine-tuning on demonstrations"),
                        ("reward", "train a reward model on ranked comparisons"),
                        ("ppo", "PPO-ptx against a reward model"),
                        ("dpo", "direct preference optimisation from the SFT model on ranked comparisons")):
        _add_config_arguments(commands.add_parser(stage, help=text))
    pipeline = commands.add_parser("pipeline", help="run SFT → reward → PPO into RUN_DIR")
    _add_config_arguments(pipeline)
    pipeline.add_argument("--preset", help="a packaged pipeline config, e.g. 'tiny'")
    pipeline.add_argument("--run-dir", required=True, help="output folder (finished stages are skipped)")
    generate = commands.add_parser("generate", help="sample from any stage's checkpoint")
    generate.add_argument("--model", required=True, help="HF folder, hub id or preset")
    generate.add_argument("--prompt", required=True, action="append", help="user message (repeatable)")
    generate.add_argument("--max-new-tokens", type=POSITIVE_INT, default=128)
    generate.add_argument("--temperature", type=NON_NEGATIVE, default=0.7, help="0 = greedy")
    generate.add_argument("--seed", type=COUNT, default=0)
    bestofn = commands.add_parser("bestofn", help="best-of-n: n samples per prompt, the reward model keeps the best")
    bestofn.add_argument("--model", required=True, help="the policy to sample from (HF folder, hub id or preset)")
    bestofn.add_argument("--reward-model", required=True, help="reward-model folder that picks the best")
    bestofn.add_argument("--prompts", required=True, help="prompt file (any format `rlhf data` reads)")
    bestofn.add_argument("--n", type=POSITIVE_INT, nargs="+", default=[1, 4, 16],
                         help="one or more n (≤ 64): the max is sampled once, smaller n use the first samples")
    bestofn.add_argument("--max-prompts", type=POSITIVE_INT, default=64)
    bestofn.add_argument("--max-new-tokens", type=POSITIVE_INT, default=64)
    bestofn.add_argument("--temperature", type=NON_NEGATIVE, default=1.0)
    bestofn.add_argument("--seed", type=COUNT, default=0)
    bestofn.add_argument("--output", required=True, help="JSONL: per prompt its samples, scores and best per n")
    bestofn.add_argument("--overwrite", action="store_true", help="replace an --output file rlhf wrote before")
    _add_data_commands(commands)
    _add_eval_commands(commands)
    add_label_commands(commands)
    report = commands.add_parser("report", help="write RUN_DIR/report.html (curves, tables, samples)")
    report.add_argument("run_dir")
    show = commands.add_parser("config", help="print a stage's default config as YAML")
    show.add_argument("stage", choices=sorted(STAGE_CONFIGS))
    return parser


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="curate, inspect and convert data files")
    actions = data.add_subparsers(dest="action", required=True)
    for name, text in (("curate", "dedupe by prefix, cap per user, split by user, scrub PII"),
                       ("stats", "counts, lengths, K, users, duplicates and PII hits as a table"),
                       ("convert", "write any supported file as canonical JSONL")):
        action = actions.add_parser(name, help=text)
        action.add_argument("file", help="JSONL(.gz), JSON, CSV, TSV, Parquet, a datasets folder, or hf:NAME[:SPLIT]")
        action.add_argument("--kind", default="auto", choices=["auto", "comparisons", "demonstrations", "prompts"])
        action.add_argument("--format", default="auto", choices=["auto", *FORMATS])
        for field in ("prompt", "response", "chosen", "rejected", "responses", "messages", "user_id"):
            action.add_argument(f"--{field.replace('_', '-')}-field", metavar="COLUMN",
                                help=f"the column that holds '{field}'")
        action.add_argument("--skip-invalid", action="store_true", help="log and drop bad records")
    curate = actions.choices["curate"]
    curate.add_argument("--output", required=True, help="new folder for train/valid/test.jsonl and the report")
    curate.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output of 'rlhf data curate' (nothing else is ever replaced)")
    curate.add_argument("--prefix-chars", type=int, default=64, help="shared prefix that marks a near-duplicate")
    curate.add_argument("--max-per-user", type=int, default=200, help="paper: 200")
    curate.add_argument("--valid-fraction", type=float, default=0.1)
    curate.add_argument("--test-fraction", type=float, default=0.1)
    curate.add_argument("--seed", type=int, default=0)
    curate.add_argument("--no-scrub", action="store_true", help="keep PII as it is")
    actions.choices["stats"].add_argument("--tokenizer", help="count tokens with this model's tokenizer")
    actions.choices["stats"].add_argument("--no-pii", action="store_true", help="skip the PII scan")
    convert = actions.choices["convert"]
    convert.add_argument("--output", required=True, help="canonical JSONL file (new)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing JSONL output file")
    convert.add_argument("--pairs", action="store_true", help="expand K-way rankings into chosen/rejected pairs")


def _add_eval_commands(commands) -> None:
    evaluation = commands.add_parser("eval", help="benchmarks, win rates, the paper's own samples")
    actions = evaluation.add_subparsers(dest="action", required=True)
    bench = actions.add_parser("benchmarks", help="TruthfulQA MC1/MC2, CrowS-Pairs, Winogender by log-likelihood")
    bench.add_argument("--model", action="append", required=True, help="repeatable: models side by side")
    bench.add_argument("--data-dir", default="../shared/data")
    bench.add_argument("--limit", type=POSITIVE_INT, help="first N items of each benchmark")
    bench.add_argument("--pretraining", help="text file: perplexity on its held-out end (the alignment tax)")
    bench.add_argument("--toxicity-contexts", type=COUNT, default=32,
                       help="RealToxicityPrompts contexts to continue with and without a respectful instruction")
    wins = actions.add_parser("winrate", help="win rate of a policy over a baseline, judged by a reward model "
                                              "or by human labels")
    wins.add_argument("--policy", help="policy model (with --judge)")
    wins.add_argument("--baseline", help="baseline model (with --judge)")
    wins.add_argument("--judge", help="reward-model folder: the run's own, or a held-out one")
    wins.add_argument("--prompts", help="prompt file (any supported format; a 'category' field gives a breakdown)")
    wins.add_argument("--labels", help="human labels instead of a judge: JSONL of {winner: policy|baseline|tie}")
    wins.add_argument("--limit", type=POSITIVE_INT, default=64)
    wins.add_argument("--max-new-tokens", type=POSITIVE_INT, default=96)
    wins.add_argument("--temperature", type=NON_NEGATIVE, default=0.7)
    wins.add_argument("--seed", type=COUNT, default=0)
    over = actions.add_parser("overoptimization", help="gold vs proxy score against sqrt(KL) for PPO along training "
                                                      "and best-of-n (Gao et al.'s fits), and every method of the run "
                                                      "side by side; into RUN_DIR/report.html")
    over.add_argument("run_dir", help="a pipeline run folder with sft, reward and ppo (ppo.snapshot_every > 0 "
                                      "for the curve)")
    over.add_argument("--gold", help="the gold reward-model folder (default: train RUN_DIR/gold-reward on every "
                                     "training comparison, twice as long as the run's)")
    over.add_argument("--prompts", type=POSITIVE_INT, default=64, help="held-out prompts (the PPO stage's test split)")
    over.add_argument("--n", type=POSITIVE_INT, nargs="+", default=[1, 2, 4, 8, 16], help="best-of-n's n (≤ 64)")
    over.add_argument("--max-new-tokens", type=POSITIVE_INT, default=64)
    over.add_argument("--temperature", type=NON_NEGATIVE, default=1.0)
    over.add_argument("--seed", type=COUNT, default=0)
    samples = actions.add_parser("paper-samples", help="truthfulness and toxicity of the paper's released samples")
    samples.add_argument("--data-dir", default="../shared/data")


def run_eval(args: argparse.Namespace) -> None:
    from rlhf.train.common import inference_autocast

    if args.action == "overoptimization":
        run_overoptimization(args)
    elif args.action == "paper-samples":
        from pathlib import Path

        from rlhf.eval.paper_samples import markdown_table, paper_sample_tables

        print(markdown_table(paper_sample_tables(Path(args.data_dir) / "instructgpt-samples")))
    elif args.action == "benchmarks":
        from pathlib import Path

        from rlhf.eval.benchmarks import BENCHMARK_FILES, check_data_dir, run_benchmarks
        from rlhf.eval.perplexity import held_out_perplexity
        from rlhf.eval.toxicity import read_contexts, scorer_agreement, toxicity_eval
        from rlhf.generate import generate
        from rlhf.models import load_causal_lm, load_tokenizer

        toxicity = ("instructgpt-samples/real_toxicity_samples.csv",) if args.toxicity_contexts else ()
        check_data_dir(Path(args.data_dir), BENCHMARK_FILES + toxicity)  # before any model is loaded
        samples = Path(args.data_dir) / "instructgpt-samples" / "real_toxicity_samples.csv"
        contexts = read_contexts(samples, args.toxicity_contexts) if args.toxicity_contexts else []
        results = {}
        for name in args.model:
            tokenizer = load_tokenizer(name)
            model = load_causal_lm(name, tokenizer=tokenizer)
            results[name] = run_benchmarks(model, tokenizer, args.data_dir, args.limit, autocast=inference_autocast)
            if args.pretraining:
                results[name]["held_out_perplexity"] = held_out_perplexity(model, tokenizer, args.pretraining)
            if contexts:
                results[name].update(toxicity_eval(
                    lambda prompts: generate(name, prompts, 32, 0.7, model=model, tokenizer=tokenizer), contexts))
        if contexts:
            agreement = scorer_agreement(samples)["toxicity/scorer_spearman_vs_paper"]
            print(f"toxicity scorer: Spearman {agreement:.3f} against the paper's scores on its own samples")
        metrics = list(next(iter(results.values())))
        print("| metric | " + " | ".join(args.model) + " |\n| --- |" + " --- |" * len(args.model))
        for metric in metrics:
            print(f"| {metric} | " + " | ".join(f"{results[m][metric]:.3f}" for m in args.model) + " |")
    else:
        from pathlib import Path

        from rlhf.data.readers import read_prompts
        from rlhf.eval.run import RewardScorer
        from rlhf.eval.winrate import read_human_labels, win_rate, win_rate_by_category
        from rlhf.generate import generate

        if args.labels:
            outcomes, categories = read_human_labels(args.labels)
            policy_scores, baseline_scores, judge = outcomes, [0.5] * len(outcomes), f"human labels {args.labels}"
        else:
            if not (args.policy and args.baseline and args.judge and args.prompts):
                raise ConfigError("eval winrate needs --policy, --baseline, --judge and --prompts (or --labels)")
            prompts = read_prompts(args.prompts)[:args.limit]
            texts = [p.prompt[-1]["content"] for p in prompts]
            categories = [p.category for p in prompts]
            ours = generate(args.policy, texts, args.max_new_tokens, args.temperature, args.seed)
            theirs = generate(args.baseline, texts, args.max_new_tokens, args.temperature, args.seed)
            scorer = RewardScorer(Path(args.judge))
            policy_scores, baseline_scores = scorer(texts, ours), scorer(texts, theirs)
            judge = f"reward model {args.judge}"
        result = win_rate(policy_scores, baseline_scores)
        print(f"win rate over {result['n']} prompts ({judge}): {result['win_rate']:.3f} "
              f"[{result['low']:.3f}, {result['high']:.3f}] (95% bootstrap, ties count half)")
        if any(c is not None for c in categories):
            named = ["(none)" if c is None else c for c in categories]
            by = win_rate_by_category(policy_scores, baseline_scores, named)
            for category, r in by.items():
                print(f"  {category}: {r['win_rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}] n={r['n']}")


def optimised_against(run_dir) -> list[str]:
    """The reward models the run's policy stages optimised against (from their metadata)."""
    import json

    from rlhf.checkpoint import METADATA_FILE

    found = [str(run_dir / "reward")]
    for meta in run_dir.glob(f"*/{METADATA_FILE}"):
        try:
            found.append(json.loads(meta.read_text())["config"]["reward_model"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [path for path in found if isinstance(path, str) and path]


def run_overoptimization(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rlhf.checkpoint import is_finished, snapshot_folders
    from rlhf.eval.overoptimization import fit_lines, overoptimization, train_gold_reward
    from rlhf.pipeline import is_run_dir

    run_dir = Path(args.run_dir)
    if not is_run_dir(run_dir):
        raise DataError(f"{run_dir}: not an rlhf run folder (no pipeline config.yaml); give the --run-dir of a "
                        "pipeline run")
    for stage in ("sft", "reward", "ppo"):
        if not is_finished(run_dir / stage):
            raise DataError(f"{run_dir / stage}: not a finished stage; run the pipeline first")
    if max(args.n) > 64:
        raise DataError(f"eval overoptimization: --n {max(args.n)}: at most 64 samples per prompt")
    if not snapshot_folders(run_dir / "ppo"):
        logging.getLogger("rlhf").warning("%s: no PPO snapshots (ppo.snapshot_every was 0): the PPO curve has "
                                          "two points, SFT and the final policy", run_dir / "ppo")
    if args.gold and not is_finished(args.gold):
        raise DataError(f"--gold {args.gold}: not a finished reward-model folder")
    if args.gold and any(os.path.exists(proxy) and os.path.samefile(args.gold, proxy)
                         for proxy in optimised_against(run_dir)):
        raise DataError(f"--gold {args.gold}: a policy of this run was optimised against it; the gold judge must "
                        "be a reward model no stage used (leave --gold out to train one)")
    gold = Path(args.gold) if args.gold else train_gold_reward(run_dir)
    result = overoptimization(run_dir, gold, args.prompts, tuple(args.n), args.max_new_tokens, args.temperature,
                              args.seed)
    print(f"over-optimisation on {result['prompts']} held-out prompts, gold judge {gold}:")
    for line in fit_lines(result["fits"]):
        print(f"  {line}")
    print(f"  {'method':<14} {'KL':>7} {'gold':>8} {'proxy':>8}  gold win rate vs SFT")
    for row in result["table"]:
        rate = row["win_rate"]
        print(f"  {row['method']:<14} {row['kl']:7.3f} {row['gold']:+8.3f} {row['proxy']:+8.3f}  "
              f"{rate['win_rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]")
    print(run_dir / "report.html")


def run_data(args: argparse.Namespace) -> None:
    import json

    from rlhf.data.curate import EARLIER_CURATION, comparison_pairs, curate, read_any, to_canonical, write_curated
    from rlhf.data.formats import FieldMap
    from rlhf.outputs import check_output_file, check_output_folder, write_jsonl

    # refuse a destructive output before spending time on the data
    if args.action == "curate":
        check_output_folder(args.output, "data curate", [args.file], args.overwrite, earlier=EARLIER_CURATION)
    elif args.action == "convert":
        check_output_file(args.output, [args.file], args.overwrite)
    field_map = FieldMap(**{f: getattr(args, f"{f}_field") for f in
                            ("prompt", "response", "chosen", "rejected", "responses", "messages", "user_id")})
    invalid = [] if args.action == "stats" else None  # data stats counts bad records by problem instead of stopping
    try:
        kind, records = read_any(args.file, args.kind, args.format, field_map, args.skip_invalid, invalid)
    except DataError:
        if invalid:  # not one usable record: the table of problems still tells what is wrong, then the error
            from rlhf.data.stats import data_stats, print_stats

            print_stats(args.file, data_stats(args.kind, [], pii=False, invalid=invalid))
        raise
    if args.action == "curate":
        splits, report = curate(records, args.prefix_chars, args.max_per_user, args.seed, args.valid_fraction,
                                args.test_fraction, scrub_pii=not args.no_scrub)
        folder = write_curated(args.output, splits, report, (args.file,), args.overwrite)
        print(f"{args.file}: {len(records)} {kind} → {folder}")
        print(json.dumps({k: v for k, v in report.__dict__.items() if k != "prefix_examples"}, indent=1))
        for dropped, kept in report.prefix_examples:
            print(f"  dropped {dropped} (shares its prefix with {kept})")
    elif args.action == "stats":
        from rlhf.data.stats import data_stats, print_stats
        from rlhf.models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        print_stats(args.file, data_stats(kind, records, tokenizer, pii=not args.no_pii, invalid=invalid))
    else:
        rows = [pair for r in records for pair in comparison_pairs(r)] if args.pairs and kind == "comparisons" \
            else [to_canonical(r) for r in records]
        write_jsonl(args.output, rows, [args.file], args.overwrite)
        print(f"{args.file}: {len(records)} {kind} → {len(rows)} rows in {args.output}")


def run(args: argparse.Namespace) -> None:
    if args.command == "data":
        run_data(args)
    elif args.command == "eval":
        run_eval(args)
    elif args.command == "label":
        run_label(args)
    elif args.command == "report":
        from rlhf.eval.html_report import write_html_report
        from rlhf.pipeline import is_run_dir

        if not is_run_dir(args.run_dir):
            raise DataError(f"{args.run_dir}: not an rlhf run folder (no pipeline config.yaml); "
                            "give the --run-dir of a pipeline run")
        print(write_html_report(args.run_dir))
    elif args.command == "config":
        print(dump_config(STAGE_CONFIGS[args.stage]()), end="")
    elif args.command == "generate":
        from rlhf.generate import generate

        for prompt, response in zip(args.prompt, generate(args.model, args.prompt, args.max_new_tokens,
                                                          args.temperature, args.seed)):
            print(f"### prompt\n{prompt}\n### response\n{response}\n")
    elif args.command == "bestofn":
        from rlhf.bestofn import best_of_n
        from rlhf.data.readers import read_prompts
        from rlhf.outputs import check_output_file, write_jsonl

        if max(args.n) > 64:
            raise DataError(f"bestofn: --n {max(args.n)}: at most 64 samples per prompt")
        inputs = [args.prompts, args.model, args.reward_model]
        check_output_file(args.output, inputs, args.overwrite)  # before sampling: a refusal costs nothing
        prompts = [p.prompt for p in read_prompts(args.prompts)][:args.max_prompts]
        rows, summary = best_of_n(args.model, args.reward_model, prompts, sorted(set(args.n)), args.max_new_tokens,
                                  args.temperature, args.seed)
        write_jsonl(args.output, rows, inputs, args.overwrite)
        print(f"best-of-n on {len(rows)} prompts (reward model {args.reward_model}):")
        for row in summary:
            print(f"  n = {row['n']:2d}  score {row['score']:+.3f}  KL {row['kl']:.3f} nats")
    elif args.command == "pipeline":
        from rlhf.checkpoint import RunControl
        from rlhf.pipeline import run_pipeline

        files = ([preset_config_path(args.preset)] if args.preset else []) + args.config
        config = load_config("pipeline", files, args.overrides)
        summary = run_pipeline(config, args.run_dir, RunControl(args.restart, args.force))
        _print_summary(summary, args.run_dir)
    else:
        from rlhf.checkpoint import RunControl
        from rlhf.train.dpo import train_dpo
        from rlhf.train.ppo import train_ppo
        from rlhf.train.reward import train_reward
        from rlhf.train.sft import train_sft

        config = load_config(args.command, args.config, args.overrides)
        trainer = {"sft": train_sft, "reward": train_reward, "ppo": train_ppo, "dpo": train_dpo}[args.command]
        metrics = trainer(config, RunControl(args.restart, args.force))
        print(f"{args.command}: wrote {config.output_dir}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))


def _print_summary(summary: dict, run_dir: str) -> None:
    sft, reward, ppo = summary["sft"], summary["reward"], summary["ppo"]
    print(f"\nrun: {run_dir}")
    print(f"  sft     valid loss {sft.get('valid/loss')}, {sft.get('tokens_per_s', 0):.0f} tok/s")
    print(f"  reward  valid accuracy {reward.get('valid/accuracy')}, bias {reward.get('bias', 0):+.3f}")
    print(f"  ppo     score {ppo['eval/score_policy']:+.3f} vs SFT {ppo['eval/score_sft']:+.3f}, "
          f"win rate {ppo['eval/win_rate_vs_sft']:.2f}, KL to SFT {ppo['eval/kl_to_sft']:.2f} nats, "
          f"{ppo['episodes_per_s']:.2f} episodes/s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        run(args)
        _leave_process_group()  # on success only: after an error a collective may still be under way
    except (ConfigError, DataError) as error:
        print(f"rlhf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs under way were removed on the way out
        print("rlhf: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        where = None if isinstance(error, BrokenPipeError) else _reading_location(error.__traceback__)
        if where is None:
            raise
        logging.getLogger("rlhf").debug("unexpected error while reading %s", where, exc_info=True)
        print(f"rlhf: error: {where}: could not be read ({type(error).__name__}: {one_line(error, 200)}); "
              "this is a bug in rlhf, please report it with this line (-v shows the traceback)", file=sys.stderr)
        return BUG_EXIT
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _leave_process_group() -> None:
    """Tear down the process group of a multi-process run before the interpreter exits: left to
    interpreter shutdown, gloo's threads can be destroyed while still joinable, and the process
    aborts (SIGABRT, "terminate called without an active exception") after its work is done."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def _terminated(signum, frame):
    """SIGTERM (``kill``, a scheduler's time limit) unwinds like Ctrl-C, so that temporary outputs go."""
    raise KeyboardInterrupt


BUG_EXIT = 70  # EX_SOFTWARE: an internal error (bad input is 2)
READ_PATH = (f"rlhf{os.sep}data{os.sep}formats.py", f"rlhf{os.sep}data{os.sep}readers.py")


def _reading_location(traceback) -> str | None:
    """Last resort: when an unexpected exception was raised while a data file was being read (a frame in
    ``rlhf/data/formats.py`` or ``readers.py``), the innermost ``where`` (file:line) or ``path`` that
    frame knew; else None."""
    found = None
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_filename.endswith(READ_PATH):
            local = frame.f_locals
            for name in ("where", "path"):
                if isinstance(local.get(name), (str, os.PathLike)):
                    found = str(local[name])
                    break
        traceback = traceback.tb_next
    return found


def entry() -> None:
    """The ``rlhf`` command (console script and ``python -m rlhf.cli``): :func:`main`, then exit.

    A process that ``torchrun`` started (``WORLD_SIZE`` > 1) and whose command succeeded leaves with
    ``os._exit`` once its output is flushed: its work is written, its trackers closed and its process
    group torn down, and what is left of interpreter shutdown can only destroy gloo's threads and
    FSDP's objects in an order PyTorch does not guarantee. CI saw a finished rank abort there
    ("terminate called without an active exception", SIGABRT) after the stage had been written, and
    ``torchrun`` then reports the whole run as failed. A failing command exits the ordinary way."""
    code = main()
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # a closed pipe: the output was lost, as Python's own exit would say (120)
            os._exit(120)
        os._exit(0)
    sys.exit(code)


if __name__ == "__main__":
    entry()
