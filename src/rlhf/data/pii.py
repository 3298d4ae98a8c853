"""PII scrubbing with Microsoft Presidio's recognisers.

Offline, the pattern recognisers do the work: e-mail addresses, phone numbers (Google's
``phonenumbers``), credit-card numbers (Luhn-checked), IP addresses, IBANs and US SSNs. Names and
street addresses need a named-entity model; when a spaCy model is installed
(``python -m spacy download en_core_web_lg``) PERSON and LOCATION are scrubbed too. Each hit is
replaced by a typed placeholder such as ``<EMAIL_ADDRESS>``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from functools import lru_cache

PATTERN_ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE", "US_SSN"]
NER_ENTITIES = ["PERSON", "LOCATION"]
SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm")


def _offline_tldextract() -> None:
    """Presidio validates e-mail domains with tldextract, which otherwise tries to download the public
    suffix list on first use; its bundled snapshot is enough."""
    import tldextract
    import tldextract.tldextract as module

    module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@lru_cache(maxsize=1)
def analyzer():
    """(AnalyzerEngine, entities): with a spaCy NER model when one is installed, else a blank pipeline."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    _offline_tldextract()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    installed = next((name for name in SPACY_MODELS if spacy.util.is_package(name)), None)

    class Engine(SpacyNlpEngine):
        def __init__(self):
            super().__init__(models=[{"lang_code": "en", "model_name": installed or "blank"}])

        def load(self):
            self.nlp = {"en": spacy.load(installed) if installed else spacy.blank("en")}

    engine = Engine()
    engine.load()
    entities = PATTERN_ENTITIES + (NER_ENTITIES if installed else [])
    analyzer_engine = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    analyzer_engine.registry.add_recognizer(_unicode_email_recognizer())
    return analyzer_engine, entities


# Presidio's e-mail pattern is ASCII-only; internationalised addresses (RFC 6531: jörg@müller.de,
# 用户@例子.广告) need a Unicode local part and domain.
UNICODE_EMAIL = r"(?<![\w.+-])[\w.+-]*[^\x00-\x7f][\w.+-]*@[\w-]+(?:\.[\w-]+)+|" \
                r"(?<![\w.+-])[\w.+-]+@[\w-]*[^\x00-\x7f][\w-]*(?:\.[\w-]+)+|" \
                r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[\w-]*[^\x00-\x7f][\w-]*"


def _unicode_email_recognizer():
    from presidio_analyzer import Pattern, PatternRecognizer

    return PatternRecognizer(supported_entity="EMAIL_ADDRESS", name="UnicodeEmailRecognizer",
                             patterns=[Pattern("unicode e-mail", UNICODE_EMAIL, 0.6)])


# Spans the pattern recognisers take for PII but which are not: a version number (``v1.2.3.4``,
# ``version 10.0.0.1``, ``1.2.3.4.5``) read as an IP address, a date or time read as a phone number.
VERSION_BEFORE = re.compile(r"(?i)(?:\b(?:v|ver|version|release|build|firmware)\.?\s*:?\s*|\bv)$")
DATE_LIKE = re.compile(r"^[\s(\[]*(?:(?P<y>\d{4})(?P<s1>[-/.])(?P<a>\d{1,2})(?P=s1)(?P<b>\d{1,2})|"
                       r"(?P<c>\d{1,2})(?P<s2>[-/.])(?P<d>\d{1,2})(?P=s2)(?P<z>\d{2}|\d{4}))"
                       r"(?:[ T]\d{1,2}(?::\d{2}){0,2})?[\s)\]]*$")


def _is_date(span: str) -> bool:
    """``2023-10-15``, ``15.10.2023 14`` (a time cut short), ``(04-07-2019``: day and month in range."""
    match = DATE_LIKE.match(span)
    if not match:
        return False
    first, second = (match["a"], match["b"]) if match["y"] else (match["c"], match["d"])
    first, second = int(first), int(second)
    return (1 <= first <= 12 and 1 <= second <= 31) or (1 <= first <= 31 and 1 <= second <= 12)


def is_false_positive(text: str, start: int, end: int, entity: str) -> bool:
    span = text[start:end]
    if entity == "IP_ADDRESS":
        before, after = text[max(0, start - 24):start], text[end:end + 2]
        dotted_on = (after[:1] == "." and after[1:2].isdigit()) or (before[-1:] == "." and before[-2:-1].isdigit())
        return bool(VERSION_BEFORE.search(before)) or dotted_on
    if entity == "PHONE_NUMBER":
        return _is_date(span)
    return False


def find_pii(text: str, threshold: float = 0.3) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, entity) spans, highest score first where spans overlap."""
    engine, entities = analyzer()
    results = sorted(engine.analyze(text, language="en", entities=entities, score_threshold=threshold),
                     key=lambda r: (-r.score, r.start))
    taken: list[tuple[int, int, str]] = []
    for result in results:
        if is_false_positive(text, result.start, result.end, result.entity_type):
            continue
        if all(result.end <= start or result.start >= end for start, end, _ in taken):
            taken.append((result.start, result.end, result.entity_type))
    return sorted(taken)


def scrub(text: str, counts: Counter | None = None) -> str:
    """Replace every PII span with ``<ENTITY>``; add the hits to ``counts``."""
    spans = find_pii(text)
    for start, end, entity in reversed(spans):
        text = f"{text[:start]}<{entity}>{text[end:]}"
    if counts is not None:
        counts.update(entity for _, _, entity in spans)
    return text
