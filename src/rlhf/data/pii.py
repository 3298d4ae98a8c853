"""PII scrubbing with Microsoft Presidio's recognisers.

Offline, the pattern recognisers do the work: e-mail addresses, phone numbers (Google's
``phonenumbers``), credit-card numbers (Luhn-checked), IP addresses, IBANs and US SSNs. Names and
street addresses need a named-entity model; when a spaCy model is installed
(``python -m spacy download en_core_web_lg``) PERSON and LOCATION are scrubbed too. Each hit is
replaced by a typed placeholder such as ``<EMAIL_ADDRESS>``.
"""

from __future__ import annotations

import logging
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
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"]), entities


def find_pii(text: str, threshold: float = 0.3) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, entity) spans, highest score first where spans overlap."""
    engine, entities = analyzer()
    results = sorted(engine.analyze(text, language="en", entities=entities, score_threshold=threshold),
                     key=lambda r: (-r.score, r.start))
    taken: list[tuple[int, int, str]] = []
    for result in results:
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
