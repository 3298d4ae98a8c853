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

What every record must mean: a prompt has a user turn and ends with one; roles are system, user and
assistant; text has something visible in it (zero-width and control characters alone are empty); the
responses compared are different texts; ``user_id`` and ``category`` are strings (7, "7" and " 7 " are one
user). Every problem raises :class:`DataError` naming ``file:line`` and the field.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path

from rlhf.data.formats import FieldMap, read_text_file, rows_and_errors
from rlhf.data.records import (
    Comparison,
    Conversation,
    DataError,
    Demonstration,
    Prompt,
    as_conversation,
    is_blank,
    json_type,
    same_text,
    text_key,
)

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
MAX_RANK = 2**31 - 1  # ranks may skip numbers (1, 3), but one past any int32 is no ranking (and no tensor)
FIRST_LOCATIONS = 3  # locations shown for each problem when invalid records are counted


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), recorded in each checkpoint's metadata."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _shown(value) -> str:
    """A value as a message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(obj: dict, key: str, where: str, field: str | None = None) -> str:
    """``obj[key]``, a string with something visible in it; ``field`` names it in messages (``responses[1].text``)."""
    field = field or key
    if key not in obj:
        raise DataError(f"{where}: missing field '{field}'")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {json_type(value)}")
    if is_blank(value):
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def _optional_text(obj: dict, key: str, where: str, field: str | None = None) -> str:
    """An optional string such as Alpaca's ``input``: missing or null is ''."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field or key}' must be a string, got {json_type(value)}")
    return value


def label_field(obj: dict, key: str, where: str) -> str | None:
    """``user_id`` or ``category`` as a stripped string: null, blank and NaN are none; an integer (or an integral
    float, 7.0) is its digits, so 7, "7" and " 7 " are the same user."""
    value = obj.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return None if is_blank(value) else value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    got = repr(value) if isinstance(value, float) else json_type(value)
    raise DataError(f"{where}: field '{key}' must be a string or an integer, got {got}")


def fields_found(obj: dict, most: int = 8) -> str:
    """The record's own field names, for a message about a shape we do not know (`' prompt'` shows its space)."""
    names = [repr(str(key))[:40] for key in list(obj)[:most]]
    return "found " + (", ".join(names) + (", ..." if len(obj) > most else "") if names else "no fields")


def _metadata(obj: dict, where: str) -> dict:
    metadata = obj.get("metadata")
    if metadata is None or metadata == "":  # "": an empty CSV cell
        return {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: field 'metadata' must be an object, got {json_type(metadata)}")
    problem = _not_json(metadata, "metadata")
    if problem:
        raise DataError(f"{where}: {problem}")
    return metadata


MAX_METADATA_DEPTH = 64


def _not_json(value, field: str) -> str | None:
    """What keeps ``value`` from being written as strict JSON, naming the field: NaN or ±infinity (Python's
    json reads them; no other tool does), a value of no JSON type (binary data from Parquet), or nesting
    deeper than ``MAX_METADATA_DEPTH`` (walked with a stack: a hostile file cannot exhaust Python's)."""
    stack = [(field, value, 0)]
    while stack:
        name, item, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            return f"field '{field}' is nested deeper than {MAX_METADATA_DEPTH} levels"
        if isinstance(item, float) and not math.isfinite(item):
            return f"field '{name}' is NaN or infinite, which JSON cannot hold"
        if isinstance(item, dict):
            children = [(f"{name}.{key}", child) for key, child in item.items()]
        elif isinstance(item, list):
            children = [(f"{name}[{i}]", child) for i, child in enumerate(item)]
        elif item is None or isinstance(item, (str, int, float)):
            continue
        else:
            return f"field '{name}' holds {json_type(item)}, which JSON cannot hold"
        stack.extend((child_name, child, depth + 1) for child_name, child in reversed(children))
    return None


def _messages(value: list, key: str, where: str) -> Conversation:
    """``[{"role", "content"}, ...]`` with known roles, visible content and a system turn only first."""
    if not value:
        raise DataError(f"{where}: field '{key}' is empty")
    messages = []
    for i, message in enumerate(value):
        field = f"{key}[{i}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: field '{field}' must be an object with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise DataError(f"{where}: field '{field}.role' must be one of {', '.join(ROLES)}; got {_shown(role)}")
        if role == "system" and i > 0:
            raise DataError(f"{where}: field '{field}.role': a system turn may only come first")
        messages.append({"role": role, "content": _text(message, "content", where, f"{field}.content")})
    return messages


def _conversation(obj: dict, key: str, where: str) -> Conversation:
    """A prompt: a string (one user turn) or a list of messages that ends with a user turn."""
    value = obj.get(key)
    if not isinstance(value, list):
        return as_conversation(_text(obj, key, where))
    messages = _messages(value, key, where)
    if messages[-1]["role"] != "user":
        has_user = any(m["role"] == "user" for m in messages)
        raise DataError(f"{where}: field '{key}' must end with a user turn" if has_user
                        else f"{where}: field '{key}' has no user turn")
    return messages


def split_hh_dialogue(dialogue: str, where: str, field: str) -> tuple[Conversation, str]:
    """``\\n\\nHuman: a\\n\\nAssistant: b ...`` → (conversation before the last assistant turn, last reply).
    The dialogue starts with a Human turn (the leading blank line may be missing) and ends with the Assistant's
    reply to a Human turn; every turn has text. Windows line ends (``\\r\\n``) count as ``\\n``."""
    dialogue = dialogue.replace("\r\n", "\n")
    if "\n\nAssistant:" not in dialogue:
        raise DataError(f"{where}: field '{field}' has no '\\n\\nAssistant:' turn")
    body = dialogue.lstrip()
    if not body.startswith("Human:"):
        raise DataError(f"{where}: field '{field}' must start with a 'Human:' turn, not {_shown(body)}")
    parts = HH_TURN.split("\n\n" + body)  # ['', 'Human', text, 'Assistant', text, ...]
    turns = [(HH_ROLES[name], text.strip()) for name, text in zip(parts[1::2], parts[2::2])]
    if turns[-1][0] != "assistant":
        raise DataError(f"{where}: field '{field}' ends with a Human turn; the last turn must be the Assistant's "
                        "reply")
    if turns[-2][0] != "user":
        raise DataError(f"{where}: field '{field}' does not end with a Human turn before the last reply")
    if is_blank(turns[-1][1]):
        raise DataError(f"{where}: field '{field}' has an empty last Assistant reply")
    for number, (role, text) in enumerate(turns[:-1], start=1):
        if is_blank(text):
            raise DataError(f"{where}: field '{field}' has an empty {'Human' if role == 'user' else 'Assistant'} "
                            f"turn (turn {number})")
    return [{"role": role, "content": text} for role, text in turns[:-1]], turns[-1][1]


def _pair(prompt: Conversation, chosen: str, rejected: str, obj: dict, where: str) -> Comparison:
    if same_text(chosen, rejected):
        raise DataError(f"{where}: fields 'chosen' and 'rejected' are the same response, so they make no pair")
    return Comparison(prompt, [chosen, rejected], [1, 2], label_field(obj, "user_id", where), where,
                      _metadata(obj, where))


def _hh_comparison(obj: dict, where: str) -> Comparison:
    chosen_prompt, chosen = split_hh_dialogue(_text(obj, "chosen", where), where, "chosen")
    rejected_prompt, rejected = split_hh_dialogue(_text(obj, "rejected", where), where, "rejected")
    if chosen_prompt != rejected_prompt:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' do not share the dialogue before the last reply")
    return _pair(chosen_prompt, chosen, rejected, obj, where)


def _rank(response: dict, item: str, where: str) -> int:
    """``rank`` (or ``ranking``): an integer ≥ 1; both present must agree."""
    given = {key: response[key] for key in ("rank", "ranking") if key in response}
    if not given:
        raise DataError(f"{where}: missing field '{item}.rank'")
    if len(given) == 2 and (type(given["rank"]) is not type(given["ranking"]) or given["rank"] != given["ranking"]):
        raise DataError(f"{where}: fields '{item}.rank' and '{item}.ranking' disagree "
                        f"({_shown(given['rank'])} and {_shown(given['ranking'])})")
    key, rank = next(iter(given.items()))
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise DataError(f"{where}: field '{item}.{key}' must be an integer, got {_shown(rank)}")
    if not 1 <= rank <= MAX_RANK:
        raise DataError(f"{where}: field '{item}.{key}' must be ≥ 1 (1 = best) and ≤ {MAX_RANK}, got {_shown(rank)}")
    return rank


def _ranked(obj: dict, where: str) -> Comparison:
    prompt = _conversation(obj, "prompt", where)
    responses = obj["responses"]
    if not isinstance(responses, list):
        raise DataError(f"{where}: field 'responses' must be an array of {{text, rank}} objects, "
                        f"got {json_type(responses)}")
    if len(responses) < 2:
        raise DataError(f"{where}: field 'responses' needs at least 2 responses")
    texts, ranks, first_with_text = [], [], {}
    for i, response in enumerate(responses):
        item = f"responses[{i}]"
        if not isinstance(response, dict):
            raise DataError(f"{where}: field '{item}' must be an object with 'text' and 'rank'")
        texts.append(_text(response, "text", where, f"{item}.text"))
        ranks.append(_rank(response, item, where))
        j = first_with_text.setdefault(text_key(texts[-1]), i)
        if ranks[j] != ranks[i]:
            raise DataError(f"{where}: fields 'responses[{j}]' and '{item}' are the same text with different ranks "
                            f"({ranks[j]} and {ranks[i]})")
    if len(set(ranks)) < 2:
        raise DataError(f"{where}: field 'responses' has all ranks equal, so it makes no pair")
    return Comparison(prompt, texts, ranks, label_field(obj, "user_id", where), where, _metadata(obj, where))


def parse_comparison(obj: dict, where: str) -> Comparison:
    if "responses" in obj:
        return _ranked(obj, where)
    if "prompt" in obj:
        return _pair(_conversation(obj, "prompt", where), _text(obj, "chosen", where), _text(obj, "rejected", where),
                     obj, where)
    if "chosen" in obj or "rejected" in obj:
        return _hh_comparison(obj, where)
    raise DataError(f"{where}: not a comparison: expected 'prompt'+'chosen'/'rejected', 'prompt'+'responses', "
                    f"or HH 'chosen'/'rejected' dialogues; {fields_found(obj)}")


def parse_demonstrations(obj: dict, where: str) -> list[Demonstration]:
    user_id, metadata = label_field(obj, "user_id", where), _metadata(obj, where)
    return [Demonstration(prompt, response, user_id, where, metadata)
            for prompt, response in _prompts_and_responses(obj, where)]


def _with_input(instruction: str, extra: str) -> Conversation:
    return as_conversation(instruction if is_blank(extra) else f"{instruction}\n\n{extra}")


def _prompts_and_responses(obj: dict, where: str) -> list[tuple[Conversation, str]]:
    if "instances" in obj:  # self-instruct: one demonstration per instance
        instruction, instances = _text(obj, "instruction", where), obj["instances"]
        if not isinstance(instances, list):
            raise DataError(f"{where}: field 'instances' must be an array of {{input, output}} objects, "
                            f"got {json_type(instances)}")
        if not instances:
            raise DataError(f"{where}: field 'instances' is empty")
        pairs = []
        for i, instance in enumerate(instances):
            item = f"instances[{i}]"
            if not isinstance(instance, dict):
                raise DataError(f"{where}: field '{item}' must be an object with 'input' and 'output', "
                                f"got {json_type(instance)}")
            prompt = _with_input(instruction, _optional_text(instance, "input", where, f"{item}.input"))
            pairs.append((prompt, _text(instance, "output", where, f"{item}.output")))
        return pairs
    if "instruction" in obj:  # Alpaca
        prompt = _with_input(_text(obj, "instruction", where), _optional_text(obj, "input", where))
        return [(prompt, _text(obj, "output", where))]
    if "messages" in obj:
        value = obj["messages"]
        if not isinstance(value, list):
            raise DataError(f"{where}: field 'messages' must be an array of {{role, content}} objects, "
                            f"got {json_type(value)}")
        messages = _messages(value, "messages", where)
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant turn after a prompt")
        if messages[-2]["role"] != "user":
            raise DataError(f"{where}: field 'messages' must have a user turn just before the last assistant turn")
        return [(messages[:-1], messages[-1]["content"])]
    if "prompt" in obj:
        key = "completion" if "completion" in obj and "response" not in obj else "response"
        if key not in obj and "chosen" in obj:
            key = "chosen"
        return [(_conversation(obj, "prompt", where), _text(obj, key, where))]
    if "chosen" in obj:  # HH dialogue: the chosen reply is the demonstration
        return [split_hh_dialogue(_text(obj, "chosen", where), where, "chosen")]
    raise DataError(f"{where}: not a demonstration: expected 'prompt'+'response', 'messages', 'instruction'+"
                    f"'output', 'instruction'+'instances' or an HH 'chosen' dialogue; {fields_found(obj)}")


def parse_prompt(obj: dict, where: str) -> Prompt:
    category, metadata = label_field(obj, "category", where), _metadata(obj, where)
    if "prompt" in obj:
        user_id = label_field(obj, "user_id", where)
        return Prompt(_conversation(obj, "prompt", where), user_id, where, category, metadata)
    demo = parse_demonstrations(obj, where)[0]
    return Prompt(demo.prompt, demo.user_id, where, category, metadata)


PARSERS: dict[str, Callable] = {"comparisons": parse_comparison, "demonstrations": parse_demonstrations,
                                "prompts": parse_prompt}
ONE = {"comparisons": "comparison", "demonstrations": "demonstration", "prompts": "prompt"}


def detect_kind(row: dict) -> str | None:
    """The kind a row's own fields make it (a null field counts as absent, as in a Parquet file whose columns are
    the union of two kinds; an empty one is present: an empty CSV cell is a missing value, reported as such);
    None for a row that is not complete enough to tell (``{"prompt", "chosen"}``, ``{"question"}``), which the
    file's kind then reads."""
    keys = {key for key, value in row.items() if value is not None}
    if "responses" in keys or {"chosen", "rejected"} <= keys:
        return "comparisons"
    hh_chosen_only = "chosen" in keys and "prompt" not in keys
    if hh_chosen_only or keys & {"response", "completion", "messages", "output", "instances"}:
        return "demonstrations"
    if "prompt" in keys and not keys & {"chosen", "rejected"}:
        return "prompts"
    return None


def _file_kind(rows: list) -> tuple[str, str | None]:
    """The kind most rows show (on a tie, the one seen first) and where it is first seen; demonstrations
    when no row shows one. A stray row of another kind is then the error (or, skipped, the loss), not
    the many rows after it."""
    first: dict[str, str] = {}
    counts: Counter = Counter()
    for where, row in rows:
        kind = detect_kind(row) if isinstance(row, dict) else None
        if kind:
            first.setdefault(kind, where)
            counts[kind] += 1
    if not counts:
        return "demonstrations", None
    kind = max(first, key=lambda name: counts[name])  # first is in order seen: max keeps the earliest on a tie
    return kind, first[kind]


def _same_kind(row: dict, where: str, kind: str, first_where: str) -> None:
    row_kind = detect_kind(row)
    if row_kind not in (None, kind):
        raise DataError(f"{where}: a {ONE[row_kind]} record, but {first_where} holds a {ONE[kind]}: a file holds one "
                        "kind of record (or pass --kind to read every row as one kind)")


def problem_counts(invalid: list[tuple[str, str]]) -> list[tuple[str, int, list[str]]]:
    """Invalid records grouped by problem, most frequent first: ``(problem, count, first locations)`` with the
    locations as ``:LINE`` (or ``:item N``, ``:row N``; the path left out)."""
    groups: dict[str, list[str]] = {}
    for where, problem in invalid:
        groups.setdefault(problem, []).append(":" + where.rsplit(":", 1)[-1])
    return [(problem, len(wheres), wheres[:FIRST_LOCATIONS])
            for problem, wheres in sorted(groups.items(), key=lambda item: -len(item[1]))]


def first_locations(count: int, first: list[str]) -> str:
    return ", ".join(first) + (", ..." if count > len(first) else "")


def describe_invalid(invalid: list[tuple[str, str]], most: int = 5) -> str:
    """One line: ``2 × field 'chosen' is empty (:4, :9); 1 × ...``, the ``most`` frequent problems."""
    counts = problem_counts(invalid)
    shown = [f"{count} × {problem} ({first_locations(count, first)})" for problem, count, first in counts[:most]]
    if len(counts) > most:
        others = len(counts) - most
        shown.append(f"{sum(count for _, count, _ in counts[most:])} more with {others} other "
                     f"problem{'s' if others > 1 else ''} (-v lists each)")
    return "; ".join(shown)


def read_any(path: str | Path, kind: str = "auto", format: str = "auto", field_map: FieldMap | None = None,
             skip_invalid: bool = False, invalid: list | None = None) -> tuple[str, list]:
    """Read records of ``kind`` (comparisons, demonstrations or prompts). ``auto`` takes the kind from the rows'
    own fields, and a row of another kind than the first is an error (a file holds one kind); naming a kind
    reads every row as that kind (the prompts of a comparisons file, HH chosen replies as demonstrations).

    A bad row raises its DataError; with ``skip_invalid`` it is dropped, and one warning counts the drops by
    problem; given a list ``invalid``, every bad row is appended to it as ``(where, problem)`` instead (for
    ``rlhf data stats``). No usable record at all is an error."""
    if kind not in ("auto", *PARSERS):
        raise DataError(f"{path}: unknown kind '{kind}'; expected auto, {', '.join(PARSERS)}")
    # closed on the way out, error or not: a half-read file left to the garbage collector is closed wherever the
    # collection happens to run, which may be deep inside the next file's json.loads (a RecursionError there)
    with closing(rows_and_errors(path, format, field_map)) as stream:
        rows: Iterable = stream
        first_where = None
        if kind == "auto":
            rows = list(rows)
            kind, first_where = _file_kind(rows)
        return _records(path, kind, rows, first_where, skip_invalid, invalid)


def _records(path, kind: str, rows: Iterable, first_where: str | None, skip_invalid: bool,
             invalid: list | None) -> tuple[str, list]:
    parse, records, problems = PARSERS[kind], [], ([] if invalid is None else invalid)
    for where, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            if first_where:
                _same_kind(row, where, kind, first_where)
            parsed = parse(row, where)
        except DataError as error:
            if not skip_invalid and invalid is None:
                raise
            problems.append((where, str(error).removeprefix(f"{where}: ")))
            logger.debug("skipping %s", error)
            continue
        records.extend(parsed if isinstance(parsed, list) else [parsed])
    if problems and invalid is None:
        logger.warning("%s: skipped %d invalid record(s): %s", path, len(problems), describe_invalid(problems))
    if not records:
        raise DataError(f"{path}: no usable records" +
                        (f" ({len(problems)} invalid: {describe_invalid(problems)})" if problems else ""))
    return kind, records


def read_demonstrations(path: str | Path, skip_invalid: bool = False, format: str = "auto",
                        field_map: FieldMap | None = None) -> list[Demonstration]:
    return read_any(path, "demonstrations", format, field_map, skip_invalid)[1]


def read_comparisons(path: str | Path, skip_invalid: bool = False, format: str = "auto",
                     field_map: FieldMap | None = None) -> list[Comparison]:
    return read_any(path, "comparisons", format, field_map, skip_invalid)[1]


def read_prompts(path: str | Path, skip_invalid: bool = False, format: str = "auto",
                 field_map: FieldMap | None = None) -> list[Prompt]:
    return read_any(path, "prompts", format, field_map, skip_invalid)[1]


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    text = read_text_file(path)
    if not text.strip():
        raise DataError(f"{path}: pretraining text file is empty")
    return text
