"""Readers for the shapes in which RLHF data is published, each record checked on the way in.

Rows come from any format in :mod:`rlhf.data.formats` (JSONL, JSON, CSV/TSV, Parquet, datasets);
their shape is detected from each record's fields:

- demonstrations: ``prompt/response`` (or ``completion``), chat ``messages`` (last assistant
  turn = response), Alpaca ``instruction/input/output``, self-instruct ``instruction/instances``,
  and HH ``chosen`` dialogues (the chosen reply as a demonstration);
- comparisons: ``prompt/chosen/rejected``, HH ``chosen/rejected`` full dialogues (shared part =
  prompt), ranked ``prompt/responses[{text, rank}]`` with rank 1 best;
- prompts: any of the above (its prompt), or ``{"prompt": ...}``;
- pretraining text: a plain text file.

Every problem raises :class:`DataError` naming ``file:line`` and the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from rlhf.data.formats import FieldMap, iter_rows, read_text_file
from rlhf.data.records import Comparison, Conversation, DataError, Demonstration, Prompt, as_conversation

logger = logging.getLogger(__name__)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), recorded in each checkpoint's metadata."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _text(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def _conversation(obj: dict, key: str, where: str) -> Conversation:
    value = obj.get(key)
    if isinstance(value, list):
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
                raise DataError(f"{where}: field '{key}[{i}]' must be an object with 'role' and 'content'")
        if not value:
            raise DataError(f"{where}: field '{key}' is empty")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return as_conversation(_text(obj, key, where))


def split_hh_dialogue(dialogue: str, where: str, field: str) -> tuple[Conversation, str]:
    """``\\n\\nHuman: a\\n\\nAssistant: b ...`` → (conversation before the last assistant turn, last reply)."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: field '{field}' has no '\\n\\nAssistant:' turn")
    reply = dialogue[cut + len(ASSISTANT):].strip()
    history = dialogue[:cut]
    conversation: Conversation = []
    for chunk in history.split(HUMAN)[1:]:
        human, *assistant_turns = chunk.split(ASSISTANT)
        conversation.append({"role": "user", "content": human.strip()})
        conversation.extend({"role": "assistant", "content": turn.strip()} for turn in assistant_turns)
    if not conversation or conversation[-1]["role"] != "user":
        raise DataError(f"{where}: field '{field}' does not end with a Human turn before the last reply")
    if not reply:
        raise DataError(f"{where}: field '{field}' has an empty last Assistant reply")
    return conversation, reply


def _hh_comparison(obj: dict, where: str) -> Comparison:
    chosen_prompt, chosen = split_hh_dialogue(_text(obj, "chosen", where), where, "chosen")
    rejected_prompt, rejected = split_hh_dialogue(_text(obj, "rejected", where), where, "rejected")
    if chosen_prompt != rejected_prompt:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' do not share the dialogue before the last reply")
    return Comparison(chosen_prompt, [chosen, rejected], [1, 2], obj.get("user_id"), where)


def parse_comparison(obj: dict, where: str) -> Comparison:
    if "responses" in obj:
        prompt = _conversation(obj, "prompt", where)
        responses = obj["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(f"{where}: field 'responses' needs at least 2 responses")
        texts, ranks = [], []
        for i, response in enumerate(responses):
            item = f"responses[{i}]"
            if not isinstance(response, dict):
                raise DataError(f"{where}: field '{item}' must be an object with 'text' and 'rank'")
            texts.append(_text(response, "text", f"{where}: {item}"))
            rank = response.get("rank", response.get("ranking"))
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise DataError(f"{where}: field '{item}.rank' must be an integer, got {rank!r}")
            if rank < 1:
                raise DataError(f"{where}: field '{item}.rank' must be ≥ 1 (1 = best), got {rank}")
            ranks.append(rank)
        if len(set(ranks)) < 2:
            raise DataError(f"{where}: field 'responses' has all ranks equal, so it makes no pair")
        return Comparison(prompt, texts, ranks, obj.get("user_id"), where, _metadata(obj, where))
    if "prompt" in obj:
        prompt = _conversation(obj, "prompt", where)
        return Comparison(prompt, [_text(obj, "chosen", where), _text(obj, "rejected", where)], [1, 2],
                          obj.get("user_id"), where)
    if "chosen" in obj:
        return _hh_comparison(obj, where)
    raise DataError(f"{where}: not a comparison: expected 'prompt'+'chosen'/'rejected', 'prompt'+'responses', "
                    "or HH 'chosen'/'rejected' dialogues")


def _metadata(obj: dict, where: str) -> dict:
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: field 'metadata' must be an object, got {type(metadata).__name__}")
    return metadata


def parse_demonstrations(obj: dict, where: str) -> list[Demonstration]:
    user_id = obj.get("user_id")
    demos = _parse_demonstrations(obj, where, user_id)
    metadata = _metadata(obj, where)
    for demo in demos:
        demo.metadata = metadata
    return demos


def _parse_demonstrations(obj: dict, where: str, user_id) -> list[Demonstration]:
    if "instances" in obj:  # self-instruct: one demonstration per instance
        instruction = _text(obj, "instruction", where)
        demos = []
        for i, instance in enumerate(obj["instances"]):
            item = f"{where}: instances[{i}]"
            extra = instance.get("input", "") or ""
            prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            demos.append(Demonstration(as_conversation(prompt), _text(instance, "output", item), user_id, where))
        if not demos:
            raise DataError(f"{where}: field 'instances' is empty")
        return demos
    if "instruction" in obj:  # Alpaca
        instruction = _text(obj, "instruction", where)
        extra = obj.get("input", "") or ""
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [Demonstration(as_conversation(prompt), _text(obj, "output", where), user_id, where)]
    if "messages" in obj:
        messages = _conversation(obj, "messages", where)
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise DataError(f"{where}: field 'messages' must end with an assistant turn after a prompt")
        if not messages[-1]["content"].strip():
            raise DataError(f"{where}: field 'messages[-1].content' is empty")
        return [Demonstration(messages[:-1], messages[-1]["content"], user_id, where)]
    if "prompt" in obj:
        key = "completion" if "completion" in obj and "response" not in obj else "response"
        if key not in obj and "chosen" in obj:
            key = "chosen"
        return [Demonstration(_conversation(obj, "prompt", where), _text(obj, key, where), user_id, where)]
    if "chosen" in obj:  # HH dialogue: the chosen reply is the demonstration
        prompt, reply = split_hh_dialogue(_text(obj, "chosen", where), where, "chosen")
        return [Demonstration(prompt, reply, user_id, where)]
    raise DataError(f"{where}: not a demonstration: expected 'prompt'+'response', 'messages', "
                    "'instruction'+'output', 'instruction'+'instances' or an HH 'chosen' dialogue")


def parse_prompt(obj: dict, where: str) -> Prompt:
    category, metadata = obj.get("category"), _metadata(obj, where)
    if "prompt" in obj:
        return Prompt(_conversation(obj, "prompt", where), obj.get("user_id"), where, category, metadata)
    demo = parse_demonstrations(obj, where)[0]
    return Prompt(demo.prompt, demo.user_id, where, category, metadata)


def _read(path: str | Path, parse: Callable, skip_invalid: bool, format: str, field_map: FieldMap | None) -> list:
    """Parse every row; with ``skip_invalid`` a bad record is logged (file:line: reason) and dropped."""
    records, skipped = [], 0
    lines = iter_rows(path, format, field_map)
    while True:
        try:
            where, obj = next(lines)
        except StopIteration:
            break
        try:
            parsed = parse(obj, where)
        except DataError as error:
            if not skip_invalid:
                raise
            skipped += 1
            logger.warning("skipping %s", error)
            continue
        records.extend(parsed if isinstance(parsed, list) else [parsed])
    if skipped:
        logger.warning("%s: skipped %d invalid record(s)", path, skipped)
    if not records:
        raise DataError(f"{path}: no usable records")
    return records


def read_demonstrations(path: str | Path, skip_invalid: bool = False, format: str = "auto",
                        field_map: FieldMap | None = None) -> list[Demonstration]:
    return _read(path, parse_demonstrations, skip_invalid, format, field_map)


def read_comparisons(path: str | Path, skip_invalid: bool = False, format: str = "auto",
                     field_map: FieldMap | None = None) -> list[Comparison]:
    return _read(path, parse_comparison, skip_invalid, format, field_map)


def read_prompts(path: str | Path, skip_invalid: bool = False, format: str = "auto",
                 field_map: FieldMap | None = None) -> list[Prompt]:
    return _read(path, parse_prompt, skip_invalid, format, field_map)


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    text = read_text_file(path)
    if not text.strip():
        raise DataError(f"{path}: pretraining text file is empty")
    return text


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write atomically: a temporary name, renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    staging.replace(path)
