"""fedleak's core layer: errors, files, tokenizer, models, data, the client's arithmetic, seeds and plotting.

It imports nothing else of the project, so the attacks (``adversary``), the defenses (``defenses``) and the Flower
apps above them can all build on it (the import contract in ``pyproject.toml`` checks this).
"""
