"""The three record kinds every stage reads. A prompt is always a conversation
(a list of ``{"role", "content"}`` messages ending with a user turn); ``source`` is
``file:line`` so that any later error can point back at the input."""

from __future__ import annotations

from dataclasses import dataclass, field

Conversation = list[dict[str, str]]


class DataError(ValueError):
    """Bad input, with the location in the message: ``file:line: field: what is wrong``."""


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
