"""This task's config keys and their types (``engine.config`` adds the common ones: seed,
max_updates, optimizer, schedule, ...). Importable without torch, so ``scripts.sweep`` resolves
a table's runs without loading the task."""

SCHEMA = {
    "max_tokens": int,
    "tokens_per_update": (int, type(None)),
    "batch_multiple": int,
    "clip": (float, type(None)),
    "label_smoothing": float,
    "average_last": int,
    "generation": str,
    "valid_generation": str,  # "none": valid loss only
    "decode_batch_size": int,
    "generations": dict,
    "model": dict,
    "preprocess": dict,
}
