"""shelley.training: corpus, tokenizer, model, trainer and sampler (torch).

What other stages need of a run without torch (the model's shape, file names, errors)
lives in core/, which this package imports and which imports nothing of it.
"""
