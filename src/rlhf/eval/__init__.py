"""Evaluation: held-out perplexity (the alignment tax), refusal rates, RM judgements, the report."""
