"""The three stages, each a thin loop over the shared pieces in ``common``."""
