"""shelley.training: corpus, tokenizer, model, trainer and sampler.

This package's __init__ imports nothing, so `training.model_config` and
`training.cli` stay importable without torch (the serving image has none).
"""
