"""This task's config keys and their types (``engine.config`` adds the common ones: seed,
epochs, optimizer, schedule, ...). Importable without torch, so ``scripts.sweep`` resolves a
table's runs without loading the task."""

SCHEMA = {
    "batch_size": int,
    "eval_batch_size": int,
    "eval_bptt": int,
    "bptt": int,
    "clip": (float, type(None)),
    "model": dict,
}
#: The keys of the ``model`` section (language_model.model.LSTMLanguageModel's arguments).
MODEL_KEYS = ("embed_dim", "hidden_size", "num_layers", "dropout", "cutoffs", "div_value")
