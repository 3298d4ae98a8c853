"""Records, readers for published formats, splits, tokenisation and batching."""
