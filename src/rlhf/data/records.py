"""The three record kinds every stage reads. A prompt is always a conversation
(a list of ``{"role", "content"}`` messages ending with a user turn); ``source`` is
``file:line`` so that any later error can point back at the input."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

Conversation = list[dict[str, str]]


class DataError(ValueError):
    """Bad input, with the location in the message: ``file:line: field: what is wrong``. The message is one
    printable line whatever the input put in it: newlines, control characters and lone surrogates are escaped."""

    def __init__(self, message: object = "", *args):
        super().__init__(printable(str(message)), *args)


def printable(text: str) -> str:
    """``text`` with every unprintable character (newline, tab, control, zero-width, lone surrogate) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


@dataclass
class Demonstration:
    prompt: Conversation
    response: str
    user_id: str | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class Comparison:
    """K ≥ 2 responses to one prompt; ranks[k] is the rank of responses[k], 1 = best, ties allowed."""

    prompt: Conversation
    responses: list[str]
    ranks: list[int]
    user_id: str | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class Prompt:
    prompt: Conversation
    user_id: str | None = None
    source: str = ""
    category: str | None = None  # e.g. the paper's use-case categories, for per-category win rates
    metadata: dict = field(default_factory=dict)


def as_conversation(prompt: str | Conversation) -> Conversation:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def json_type(value) -> str:
    """The JSON name of a value's type, for messages: object, array, string, integer, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((dict, "object"), (list, "array"), (str, "string"), (int, "integer"), (float, "number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zs", "Zl", "Zp")  # controls, format (U+200B–U+200D, U+2060, U+FEFF), spaces
INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # Hangul fillers and the blank Braille pattern


def is_blank(text: str) -> bool:
    """True when nothing in ``text`` would show: only whitespace, control and zero-width characters."""
    return all(ch in INVISIBLE_LETTERS or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def text_key(text: str) -> str:
    """What makes two responses the same text (leading and trailing whitespace does not count)."""
    return text.strip()


def same_text(a: str, b: str) -> bool:
    return text_key(a) == text_key(b)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters (for a message that quotes it)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "…"
