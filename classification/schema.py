"""This task's config keys and their types (``engine.config`` adds the common ones: seed,
epochs, optimizer, schedule, ...). Importable without torch, so ``scripts.sweep`` resolves a
table's runs without loading the task."""

SCHEMA = {
    "dataset": str,
    "num_classes": int,
    "model": str,
    "batch_size": int,
    "eval_batch_size": int,
    "augmentation": dict,
    "data_pipeline": str,  # auto, device or loader: see classification.data.pipeline
    "sync_bn": bool,  # BatchNorm statistics over all ranks (torch's SyncBatchNorm), not per rank
}
