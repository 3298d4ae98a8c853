"""The labeling app: labelers write demonstrations and rank model outputs; exports feed training."""
