"""``rlhf label load``: prompts (and responses to rank) → tasks, each assigned to labelers.

Responses come from a file (``{"prompt", "responses": [text | {"text", "model"}, …]}`` per row)
or are sampled from model checkpoints, K per prompt spread over the models. Each task goes to the
least-loaded labeler; a fraction ``overlap`` of them to ``replicas`` labelers, for agreement."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

from rlhf.data.formats import iter_rows
from rlhf.data.readers import parse_prompt, read_prompts
from rlhf.data.records import DataError, is_blank, json_type, text_key
from rlhf.label import db

logger = logging.getLogger(__name__)


def _response(value, where: str, k: int) -> dict:
    if isinstance(value, str):
        value = {"text": value}
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise DataError(f"{where}: field 'responses[{k}]' must be a string or an object with 'text'")
    if is_blank(value["text"]):
        raise DataError(f"{where}: field 'responses[{k}]' is empty")
    model = value.get("model")
    if model is not None and not isinstance(model, str):
        raise DataError(f"{where}: field 'responses[{k}].model' must be a string (the checkpoint's name), "
                        f"got {json_type(model)}")
    return {"text": value["text"], "model": model}


def first_of_each_text(responses: list[dict]) -> tuple[list[dict], list[tuple[int, int]]]:
    """Responses with distinct texts (compared after stripping), and (index, index of its first copy)
    for each repeat: one text cannot take two places in a ranking."""
    first: dict[str, int] = {}
    kept, repeats = [], []
    for index, response in enumerate(responses):
        key = text_key(response["text"])
        if key in first:
            repeats.append((index, first[key]))
            continue
        first[key] = index
        kept.append(response)
    return kept, repeats


def read_ranking_tasks(path: str | Path) -> list[dict]:
    tasks = []
    for where, row in iter_rows(path):
        prompt = parse_prompt(row, where)
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(f"{where}: field 'responses' must list at least 2 responses to rank")
        parsed, repeats = first_of_each_text([_response(r, where, k) for k, r in enumerate(responses)])
        if repeats:
            index, original = repeats[0]
            raise DataError(f"{where}: field 'responses[{index}]' repeats the text of 'responses[{original}]'; "
                            "one text cannot be ranked twice")
        tasks.append({"kind": "ranking", "prompt": prompt.prompt, "user_id": prompt.user_id,
                      "category": prompt.category, "source": where, "responses": parsed})
    if not tasks:
        raise DataError(f"{path}: no tasks")
    return tasks


def sample_ranking_tasks(prompts_path: str | Path, models: list[str], k: int, max_new_tokens: int,
                         temperature: float, seed: int) -> list[dict]:
    """K responses per prompt, sampled in turn from each model (K = 4 and 2 models → 2 each),
    in a shuffled order."""
    from rlhf.generate import generate, sampling_decoder
    from rlhf.models import load_causal_lm, load_tokenizer

    prompts = read_prompts(prompts_path)
    responses: list[list[dict]] = [[] for _ in prompts]
    for m, name in enumerate(models):
        tokenizer = load_tokenizer(name)
        decoder = sampling_decoder(load_causal_lm(name, tokenizer=tokenizer))
        for sample in range(m, k, len(models)):  # one decoder (one bf16 copy) for all of a model's samples
            texts = generate(name, [p.prompt for p in prompts], max_new_tokens, temperature, seed + sample,
                             tokenizer=tokenizer, decoder=decoder)
            for row, text in zip(responses, texts):
                row.append({"text": text or "(empty response)", "model": name})
    shuffle = random.Random(seed).shuffle  # no model always in the same place: labelers favour positions
    tasks, repeated, dropped = [], 0, 0
    for prompt, row in zip(prompts, responses):
        row, repeats = first_of_each_text(row)  # two models (or samples) can give the same text
        repeated += len(repeats)
        if len(row) < 2:
            dropped += 1
            continue
        shuffle(row)
        tasks.append({"kind": "ranking", "prompt": prompt.prompt, "user_id": prompt.user_id,
                      "category": prompt.category, "source": prompt.source, "responses": row})
    if repeated:
        logger.warning("%s: %d sampled response(s) repeated another's text and were left out; %d prompt(s) "
                       "kept fewer than 2 distinct responses and got no task", prompts_path, repeated, dropped)
    if not tasks:
        raise DataError(f"{prompts_path}: no prompt got 2 distinct responses to rank")
    return tasks


def demonstration_tasks(prompts_path: str | Path) -> list[dict]:
    return [{"kind": "demonstration", "prompt": p.prompt, "user_id": p.user_id, "category": p.category,
             "source": p.source} for p in read_prompts(prompts_path)]


def assign(num_tasks: int, labeler_ids: list[int], load: dict[int, int], overlap: float, replicas: int,
           seed: int) -> list[list[int]]:
    """Labelers for each task: the least loaded first; ``round(overlap · n)`` tasks get ``replicas``."""
    if not labeler_ids:
        raise DataError("no labelers: add some first with `rlhf label add-user`")
    if not 0.0 <= overlap <= 1.0:
        raise DataError(f"overlap: must be between 0 and 1, got {overlap}")
    if overlap > 0 and not 2 <= replicas <= len(labeler_ids):
        raise DataError(f"replicas: overlapping tasks need 2 to {len(labeler_ids)} labelers, got {replicas}")
    shared = set(random.Random(seed).sample(range(num_tasks), round(overlap * num_tasks)))
    load = {user: load.get(user, 0) for user in labeler_ids}
    assignees = []
    for task in range(num_tasks):
        chosen = sorted(labeler_ids, key=lambda user: (load[user], user))[:replicas if task in shared else 1]
        for user in chosen:
            load[user] += 1
        assignees.append(chosen)
    return assignees


def load_tasks(connection: sqlite3.Connection, tasks: list[dict], overlap: float = 0.0, replicas: int = 2,
               seed: int = 0) -> list[list[int]]:
    labelers = [row["id"] for row in db.labelers(connection)]
    assignees = assign(len(tasks), labelers, db.assignment_counts(connection), overlap, replicas, seed)
    db.add_tasks(connection, tasks, assignees)
    return assignees
