"""Evaluate a finished run folder: base, SFT, PPO (and PPO without ptx) side by side.

Numbers: reward-model accuracy on held-out comparisons; PPO vs SFT score, win rate and KL (from
the PPO stage's held-out evaluation); perplexity on held-out pretraining text (the alignment
tax); refusal rate on harmful prompts and answer rate on ordinary ones. Writes
``RUN_DIR/eval.json``, ``RUN_DIR/report.md`` and ``RUN_DIR/samples.jsonl`` (every sampled response
with its reward model and judge scores, one line per prompt, and per draw with ``eval.samples``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rlhf.checkpoint import METADATA_FILE, is_finished
from rlhf.config import PipelineConfig
from rlhf.data.collate import (
    RankedExample,
    encode_comparisons,
    encode_prompt,
    encode_response,
    sample_records,
    shared_prompt_shape,
    split_records,
)
from rlhf.data.formats import FieldMap
from rlhf.data.readers import DataError, read_comparisons, read_demonstrations, read_prompts
from rlhf.data.records import as_conversation
from rlhf.eval.overoptimization import held_out_prompts
from rlhf.eval.perplexity import held_out_perplexity, opening_probability, reference_log_likelihood
from rlhf.eval.refusal import (
    CANNED_REFUSAL,
    HARMFUL_PROMPTS,
    ORDINARY_PROMPTS,
    REFUSAL_OPENING,
    REFUSAL_WINDOW,
    refusal_rate,
)
from rlhf.eval.report import write_report
from rlhf.eval.winrate import length_controlled_win_rate, win_rate, win_rate_by_category
from rlhf.generate import generate, sampling_decoder
from rlhf.models import load_causal_lm, load_scalar_model, load_tokenizer
from rlhf.outputs import write_run_file
from rlhf.train.common import inference_autocast, resolve_mixed_precision
from rlhf.train.reward import evaluate_rankings, ranked_scores, shared_prompt_collate

logger = logging.getLogger(__name__)


def policies_of(run_dir: Path, base_model: str) -> dict[str, str]:
    found = {"base": base_model}
    for name in ("sft", "ppo", "ppo-noptx"):
        if (run_dir / name / METADATA_FILE).exists():
            found[name] = str(run_dir / name)
    return found


@contextlib.contextmanager
def quiet_truncation():
    """No warning per truncated record while an evaluation encodes its held-out data."""
    collate_log = logging.getLogger("rlhf.data.collate")
    level = collate_log.level
    collate_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        collate_log.setLevel(level)


class RewardScorer:
    """A reward model loaded once, scoring (prompt, response) pairs: its normalised scores."""

    def __init__(self, reward_dir: Path | str):
        self.tokenizer = load_tokenizer(str(reward_dir))
        self.model = load_scalar_model(str(reward_dir), self.tokenizer, trained=True).eval()
        self._scores: dict[str, float] = {}

    def accuracy(self, comparisons: list, max_length: int, batch_size: int = 8) -> dict[str, float]:
        """Pair accuracy on every given comparison (the training stage's evaluator): a longer one is
        truncated as training truncates, keeping the end of the dialogue."""
        from accelerate import Accelerator

        with quiet_truncation():
            examples = encode_comparisons(self.tokenizer, comparisons, max_length, "truncate")
        collate, shape = shared_prompt_collate(self.model.hf, self.tokenizer.pad_token_id, max_length)
        loader = DataLoader(sorted(examples, key=lambda e: shape(e)[1]), batch_size=batch_size, collate_fn=collate)
        accelerator = Accelerator(mixed_precision=resolve_mixed_precision("auto"), cpu=not torch.cuda.is_available())
        evaluation = evaluate_rankings(self.model, loader, accelerator)
        return {"accuracy": evaluation["accuracy"], "pairs": evaluation["pairs"]}

    @torch.no_grad()
    def __call__(self, prompts: list, responses: list[str], batch_size: int = 16) -> list[float]:
        """The score of each (prompt, response). The new pairs are forwarded grouped by prompt: each
        distinct prompt once with all its responses after it (:func:`collate_shared_prompt`, as the
        reward model trains), prompts in order of length so that a batch pads little; ``batch_size``
        responses per batch at least. A pair scored before is read from the cache, so scoring every
        pair of an evaluation in one call forwards each prompt once (the base model's answers, the
        canned refusal and each policy's responses to a fixed prompt share one forward)."""
        tokenizer = self.tokenizer
        grouped: dict[str, tuple[object, dict[str, str]]] = {}  # prompt -> (prompt, {pair key: response})
        for p, r in zip(prompts, responses):
            key = repr((p, r))
            if key not in self._scores:
                grouped.setdefault(repr(p), (p, {}))[1][key] = r
        examples, keys = [], []
        for p, new in grouped.values():
            prompt = encode_prompt(tokenizer, as_conversation(p))
            sequences = [prompt + encode_response(tokenizer, r or " ") for r in new.values()]
            examples.append(RankedExample(sequences, [0] * len(sequences), [len(prompt)] * len(sequences)))
            keys.append(list(new))
        # one row per response instead where a row would be longer than the model's sliding window
        longest = max((shared_prompt_shape(e)[1] for e in examples), default=1)
        collate, shape = shared_prompt_collate(self.model.hf, tokenizer.pad_token_id, longest)
        order = sorted(range(len(examples)), key=lambda i: shape(examples[i])[1])
        start = 0
        while start < len(order):
            end, responses_in = start, 0
            while end < len(order) and responses_in < batch_size:
                responses_in += len(examples[order[end]].sequences)
                end += 1
            batch = collate([examples[i] for i in order[start:end]])
            with inference_autocast():
                scores = ranked_scores(self.model, batch).tolist()
            for row, i in zip(scores, order[start:end]):
                self._scores.update(zip(keys[i], row))
            start = end
        return [self._scores[repr((p, r))] for p, r in zip(prompts, responses)]


def reward_scores(reward_dir: Path, prompts: list, responses: list[str], batch_size: int = 16) -> list[float]:
    """A reward model (normalised) on each (prompt, response), loaded for this call only."""
    return RewardScorer(reward_dir)(prompts, responses, batch_size)


def evaluation_seed(config: PipelineConfig) -> int:
    """The seed the evaluation samples with: ``eval.seed``, else the run's."""
    return config.seed if config.eval.seed is None else config.eval.seed


def draw_seeds(seed: int, draws: int) -> list[int]:
    """The seeds of an evaluation's ``draws``: the first is ``seed`` itself (one draw samples as it
    always has), each other one derived from ``seed`` and its index."""
    return [seed] + [int.from_bytes(hashlib.sha256(f"{seed}/{j}".encode()).digest()[:6], "big")
                     for j in range(1, draws)]


def evaluation_draws(config: PipelineConfig) -> int:
    """Draws per prompt: ``eval.samples``, one when sampling is greedy (every draw would be the same)."""
    return 1 if config.eval.temperature == 0 else config.eval.samples


def measure_policy(path: str, config: PipelineConfig, extra_prompts: list = (), references: list = (),
                   pretraining: str | None = None,
                   benign: list = ()) -> tuple[dict[str, float], list[str], list[list[str]]]:
    """Sample the fixed harmful and ordinary prompts, then ``extra_prompts``, from the policy at
    ``path`` (the run's eval settings; :func:`evaluation_draws` draws each, with the seeds of
    :func:`draw_seeds`), and measure it: harmful prompts refused, ordinary ones answered (the mean over
    the draws), the exact mean probability that a response opens with ``REFUSAL_OPENING`` on each set
    (no sampling noise), the mean length of the responses to the fixed prompts in tokens, the
    log-likelihood of the human ``references`` and the perplexity of held-out ``pretraining`` text
    where given, and over-refusal on the ``benign`` requests: the share answered (one sample of
    ``REFUSAL_WINDOW`` tokens each) and the exact opening probability.
    Returns the measures, the responses to the fixed, extra and benign prompts of draw 0 in prompt
    order, and every draw's responses to the fixed and extra prompts."""
    eval_config = config.eval
    tokenizer = load_tokenizer(path, config.chat_template)
    model = load_causal_lm(path, tokenizer=tokenizer).eval()
    fixed = HARMFUL_PROMPTS + ORDINARY_PROMPTS
    decoder = sampling_decoder(model)
    draws = [generate(path, fixed + list(extra_prompts), eval_config.max_new_tokens, eval_config.temperature,
                      seed=seed, tokenizer=tokenizer, batch_size=eval_config.batch_size, decoder=decoder)
             for seed in draw_seeds(evaluation_seed(config), evaluation_draws(config))]
    harmful = [d[:len(HARMFUL_PROMPTS)] for d in draws]
    ordinary = [d[len(HARMFUL_PROMPTS):len(fixed)] for d in draws]
    metrics = {"harmful_refused": sum(map(refusal_rate, harmful)) / len(draws),
               "ordinary_answered": 1 - sum(map(refusal_rate, ordinary)) / len(draws),
               "response_tokens": mean_tokens(tokenizer, [r for d in draws for r in d[:len(fixed)]])}
    for kind, prompts in (("harmful", HARMFUL_PROMPTS), ("ordinary", ORDINARY_PROMPTS)):
        metrics.update(refusal_opening(model, tokenizer, kind, prompts, config))
    responses = list(draws[0])
    if benign:
        measures, sampled = over_refusal(model, tokenizer, decoder, benign, config)
        metrics.update(measures)
        responses = responses + sampled
    del decoder  # its sampling copy of the weights
    if references:
        metrics["reference_logprob"] = reference_log_likelihood(model, tokenizer, list(references),
                                                                config.sft.max_length, autocast=inference_autocast)
    if pretraining:
        metrics["held_out_perplexity"] = held_out_perplexity(
            model, tokenizer, pretraining, config.ppo.ptx_held_out_fraction, eval_config.perplexity_block_size,
            eval_config.perplexity_tokens, autocast=inference_autocast)
    return metrics, responses, draws


def refusal_opening(model, tokenizer, kind: str, prompts: list, config: PipelineConfig) -> dict[str, float]:
    """``{kind}_refusal_opening``: the exact mean probability over ``prompts`` that a response sampled at
    the evaluation's temperature opens with ``REFUSAL_OPENING``; nothing when sampling is greedy (one
    sample is then the exact answer)."""
    if config.eval.temperature == 0:
        return {}
    opening = opening_probability(model, tokenizer, list(prompts), REFUSAL_OPENING, config.eval.temperature,
                                  autocast=inference_autocast)
    return {f"{kind}_refusal_opening": sum(opening) / len(opening)}


def benign_tokens(config: PipelineConfig) -> int:
    """How many tokens a benign request's sample has: enough to see a refusal (``REFUSAL_WINDOW``)."""
    return min(REFUSAL_WINDOW, config.eval.max_new_tokens)


def over_refusal(model, tokenizer, decoder, benign: list,
                 config: PipelineConfig) -> tuple[dict[str, float], list[str]]:
    """On benign requests (:func:`benign_prompts`): the share answered, one sample of ``REFUSAL_WINDOW``
    tokens each (the evaluation's temperature and seed, from ``decoder``, a sampler of ``model``), and the
    exact refusal-opening probability. Returns the measures and the samples."""
    sampled = generate("", list(benign), benign_tokens(config), config.eval.temperature,
                       seed=evaluation_seed(config), tokenizer=tokenizer, batch_size=config.eval.batch_size,
                       decoder=decoder)
    measures = {"benign_answered": 1 - refusal_rate(sampled),
                **refusal_opening(model, tokenizer, "benign", benign, config)}
    return measures, sampled


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """The length of each text in the tokenizer's tokens (no special tokens)."""
    return [len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts]


def mean_tokens(tokenizer, texts: list[str]) -> float:
    """Mean length of ``texts`` in the tokenizer's tokens: a policy that wins a judge with much shorter
    responses may have found the judge's taste for brevity rather than helpfulness."""
    return sum(token_counts(tokenizer, texts)) / max(len(texts), 1)


def refusal_sets(answers: dict[str, str], benign: list = (),
                 benign_answers: list[str] = ()) -> list[tuple[str, list, list[str]]]:
    """What :func:`refusal_preference` compares the canned refusal with: (kind, prompts, answers)."""
    sets = [("ordinary", ORDINARY_PROMPTS, [answers[p] for p in ORDINARY_PROMPTS]),
            ("harmful", HARMFUL_PROMPTS, [answers[p] for p in HARMFUL_PROMPTS])]
    if benign:
        sets.append(("benign", list(benign), list(benign_answers)))
    return sets


def refusal_pairs(answers: dict[str, str], benign: list = (),
                  benign_answers: list[str] = ()) -> tuple[list, list[str]]:
    """Every (prompt, response) :func:`refusal_preference` scores, as (prompts, responses)."""
    prompts, responses = [], []
    for _, some, said in refusal_sets(answers, benign, benign_answers):
        prompts += list(some) * 2
        responses += [CANNED_REFUSAL] * len(some) + list(said)
    return prompts, responses


def refusal_preference(scorer, answers: dict[str, str], benign: list = (),
                       benign_answers: list[str] = ()) -> dict[str, int]:
    """On how many of the fixed ordinary and harmful prompts a reward model scores a canned refusal
    (``CANNED_REFUSAL``) above ``answers`` (the base model's own responses), and on how many of the
    ``benign`` requests above ``benign_answers`` (``benign`` and ``benign_of``; where given). On ordinary
    and benign prompts every such prompt is a pull towards over-refusal for PPO, and a bias in a judge."""
    counts = {}
    for kind, prompts, responses in refusal_sets(answers, benign, benign_answers):
        refused = scorer(prompts, [CANNED_REFUSAL] * len(prompts))
        answered = scorer(prompts, responses)
        counts[kind] = sum(r > a for r, a in zip(refused, answered, strict=True))
    counts["of"] = len(ORDINARY_PROMPTS)
    if benign:
        counts["benign_of"] = len(benign)
    return counts


def benign_prompts(config: PipelineConfig) -> list:
    """``eval.benign_prompts``: a seeded sample of ``eval.benign_limit`` requests (none when unset). Read
    before any stage trains, so that a bad file is one line, not an hour's training lost."""
    eval_config = config.eval
    if not eval_config.benign_prompts:
        return []
    field_map = FieldMap(prompt=eval_config.benign_prompt_field) if eval_config.benign_prompt_field else None
    prompts = read_prompts(eval_config.benign_prompts, config.data.skip_invalid, field_map=field_map)
    return [p.prompt for p in sample_records(prompts, eval_config.benign_limit, config.seed)]


def held_out_references(paths: list[str], config: PipelineConfig) -> list:
    """The test split (else the validation split) of demonstration files, as every stage splits them."""
    demos = [d for path in paths for d in read_demonstrations(path, config.data.skip_invalid)]
    held_out = split_records(demos, config.seed, config.valid_fraction, config.test_fraction)
    return held_out["test"] or held_out["valid"]


def held_out_conversations(run_dir: Path, limit: int) -> list:
    """Up to ``limit`` of the PPO stage's held-out prompts for the judge; none (logged) when the run
    kept no prompt out (valid_fraction and test_fraction 0)."""
    if not limit:
        return []
    try:
        return [p.prompt for p in held_out_prompts(run_dir, limit)]
    except DataError as error:
        logger.warning("eval: the judge scores the fixed prompts only: %s", error)
        return []


def by_prompt(draws: list[list]) -> list:
    """Per-draw lists (k, n) as the win rates take them: one draw as its (n,) list, else (n, k)."""
    return draws[0] if len(draws) == 1 else [list(column) for column in zip(*draws, strict=True)]


def judged_win_rates(scores: dict[str, list], tokens: dict[str, list], categories: list[str],
                     baseline: str = "sft") -> dict[str, dict]:
    """Each policy against ``baseline`` under the judge, prompt by prompt, from the judge's ``scores`` of
    each policy's responses and their lengths in ``tokens`` ((n,) lists, or (n, k) with k draws per
    prompt, draw j against draw j): the win rate with its bootstrap interval over prompts, overall and
    per category of prompt, and over all prompts at equal length (``length_controlled``: what is left of
    the win once the judge's taste for shorter or longer responses is regressed out)."""
    return {name: {"all": win_rate(scores[name], scores[baseline]),
                   **win_rate_by_category(scores[name], scores[baseline], categories),
                   "length_controlled": length_controlled_win_rate(scores[name], scores[baseline], tokens[name],
                                                                   tokens[baseline]),
                   "mean_score": _mean(np.ravel(scores[name]).tolist())}
            for name in scores if name != baseline}


def _mean(values: list[float]) -> float:
    """Summed in order, as one draw's mean always was (numpy's pairwise sum can differ in the last digit)."""
    return sum(values) / len(values)


def samples_jsonl(prompts: list, categories: list[str], responses: dict[str, list[str | None]],
                  scores: dict[str, dict[str, list[float]]], draw: int | None = None) -> str:
    """``samples.jsonl``: one JSON line per evaluated prompt, in order, with its ``category``, the
    ``prompt`` as chat messages, each policy's response (``responses[policy][i]``; a policy with ``None``
    there was not sampled on it) and, under each scorer's name, that reward model's normalised score of
    each policy's response (``scores[scorer][policy][i]``; lists may stop early: the prompts after were
    not scored). A run without a judge has no ``judge`` scorer: the proxy standing in for it scores the
    held-out dialogues under ``reward``. With several draws per prompt (``eval.samples``) each line
    names its ``draw``."""
    lines = []
    for i, (prompt, category) in enumerate(zip(prompts, categories, strict=True)):
        row = {"category": category, **({} if draw is None else {"draw": draw}), "prompt": as_conversation(prompt),
               "responses": {name: texts[i] for name, texts in responses.items() if texts[i] is not None}}
        for scorer, of_policy in scores.items():
            row[scorer] = {name: round(s[i], 4) for name, s in of_policy.items() if i < len(s)}
        lines.append(json.dumps(row, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def evaluate_run(run_dir: str | Path, config: PipelineConfig, paths: dict) -> dict:
    run_dir, eval_config = Path(run_dir), config.eval
    started = time.time()
    results: dict = {"policies": {}, "samples": {}}

    comparisons = [c for p in paths["comparisons"] for c in read_comparisons(p, config.data.skip_invalid)]
    held_out = split_records(comparisons, config.seed, config.valid_fraction, config.test_fraction)
    test_comparisons = held_out["test"] or held_out["valid"]
    proxy = RewardScorer(run_dir / "reward")
    results["reward"] = {**proxy.accuracy(test_comparisons, config.reward.max_length),
                         "split": "test" if held_out["test"] else "valid"}
    ppo_meta = json.loads((run_dir / "ppo" / METADATA_FILE).read_text())["metrics"]
    results["ppo_vs_sft"] = {k.removeprefix("eval/"): v for k, v in ppo_meta.items() if k.startswith("eval/")}
    if (run_dir / "ppo-noptx" / METADATA_FILE).exists():
        noptx = json.loads((run_dir / "ppo-noptx" / METADATA_FILE).read_text())["metrics"]
        results["ppo_noptx_vs_sft"] = {k.removeprefix("eval/"): v for k, v in noptx.items() if k.startswith("eval/")}

    fixed = HARMFUL_PROMPTS + ORDINARY_PROMPTS
    conversations = held_out_conversations(run_dir, eval_config.judge_prompts)
    references = held_out_references(eval_config.reference_data or paths["demonstrations"], config)
    benign = benign_prompts(config)
    categories = (["harmful"] * len(HARMFUL_PROMPTS) + ["ordinary"] * len(ORDINARY_PROMPTS)
                  + ["held_out"] * len(conversations))
    sampled: dict[str, list[str | None]] = {}  # draw 0's responses, aligned with fixed + conversations + benign
    drawn: dict[str, list[list[str]]] = {}  # every draw's responses to the fixed prompts (+ conversations if judged)
    for name, path in tqdm(policies_of(run_dir, config.model).items(), desc="eval"):
        extra = conversations if name != "base" else []  # the judge compares the trained ones
        metrics, responses, drawn[name] = measure_policy(path, config, extra, references, paths.get("pretraining"),
                                                         benign)
        results["policies"][name] = metrics
        results["samples"][name] = dict(zip(fixed, responses[:len(fixed)], strict=True))
        sampled[name] = (responses[:len(fixed) + len(extra)] + [None] * (len(conversations) - len(extra))
                         + responses[len(fixed) + len(extra):])
    draws = evaluation_draws(config)
    judged_end = len(fixed) + len(conversations)
    judged = {name: texts for name, texts in drawn.items() if name != "base"}
    base_benign = sampled["base"][judged_end:]
    by_draw: dict[str, dict[str, list[list[float]]]] = {"reward": {}}  # scorer -> policy -> draw -> scores
    refusals = refusal_pairs(results["samples"]["base"], benign, base_benign)
    # every pair this scorer is asked for below, in one call: each prompt forwarded once with all its responses
    proxy([p for texts in drawn.values() for _ in texts for p in fixed] + refusals[0],
          [r for texts in drawn.values() for draw in texts for r in draw[:len(fixed)]] + refusals[1])
    for name, texts in drawn.items():
        by_draw["reward"][name] = proxied = [proxy(fixed, draw[:len(fixed)]) for draw in texts]
        harmful = [s for draw in proxied for s in draw[:len(HARMFUL_PROMPTS)]]
        ordinary = [s for draw in proxied for s in draw[len(HARMFUL_PROMPTS):]]
        results["policies"][name]["rm_score_harmful"] = sum(harmful) / len(harmful)
        results["policies"][name]["rm_score_ordinary"] = sum(ordinary) / len(ordinary)
    results["refusal_preference"] = {
        "reward": refusal_preference(proxy, results["samples"]["base"], benign, base_benign)}
    del proxy
    if "sft" in judged and len(judged) > 1:
        judge = run_dir / "judge" if is_finished(run_dir / "judge") else run_dir / "reward"
        judge_scorer = RewardScorer(judge)
        also = refusals if judge.name == "judge" else ([], [])
        judge_scorer([p for texts in judged.values() for _ in texts for p in fixed + conversations] + also[0],
                     [t for texts in judged.values() for draw in texts for t in draw] + also[1])
        judge_scores = {name: [judge_scorer(fixed + conversations, draw) for draw in texts]
                        for name, texts in judged.items()}
        by_draw.setdefault(judge.name, {}).update(judge_scores)  # no judge: the proxy's, held-out dialogues too
        tokens = {name: [token_counts(judge_scorer.tokenizer, draw) for draw in texts]
                  for name, texts in judged.items()}
        results["judged"] = {"judge": judge.name, "prompts": len(categories),
                             "vs_sft": judged_win_rates({n: by_prompt(s) for n, s in judge_scores.items()},
                                                        {n: by_prompt(t) for n, t in tokens.items()}, categories)}
        if judge.name == "judge":
            results["refusal_preference"]["judge"] = refusal_preference(judge_scorer, results["samples"]["base"],
                                                                        benign, base_benign)
    results["references"] = len(references)
    if benign:
        results["benign"] = {"prompts": len(benign), "source": config.eval.benign_prompts}
    if draws > 1:
        results["draws"] = draws
    results["eval_wall_time_s"] = round(time.time() - started, 1)
    lines = samples_jsonl(fixed + conversations + list(benign), categories + ["benign"] * len(benign), sampled,
                          {scorer: {n: s[0] for n, s in of.items()} for scorer, of in by_draw.items()},
                          draw=0 if draws > 1 else None)
    for j in range(1, draws):  # the other draws: the fixed prompts and the judged dialogues
        responses = {name: texts[j] + [None] * (judged_end - len(texts[j])) for name, texts in drawn.items()}
        lines += samples_jsonl(fixed + conversations, categories, responses,
                               {scorer: {n: s[j] for n, s in of.items()} for scorer, of in by_draw.items()}, draw=j)
    write_run_file(run_dir / "samples.jsonl", lines)  # before eval.json, which means done
    write_report(run_dir, results, prompts_shown=eval_config.report_prompts)
    # eval.json last and atomically: its presence means done
    write_run_file(run_dir / "eval.json", json.dumps(results, indent=2, ensure_ascii=False))
    return results
