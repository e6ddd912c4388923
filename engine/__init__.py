"""Plumbing shared by the task trees (classification, language_model, nmt): small functions.

- :mod:`engine.config`       YAML table -> one flat, type-checked run config
- :mod:`engine.cli`          the common flags, ``--print-config``, ``--plugin``, clean exits
- :mod:`engine.distributed`  torchrun environment, DDP wrapping, rank-0 logging, gathering
- :mod:`engine.run`          the run structure: run-directory lock, resume, snapshot, record,
                             the finished test, update-based runs, gradient accumulation
- :mod:`engine.lock`         one writer per run directory (flock, stale-lock takeover)
- :mod:`engine.checkpoint`   atomic, checksummed checkpoints; RNG capture; keep-last; average
- :mod:`engine.metrics`      run directory files: config.json, metrics.jsonl, results.json, TB,
                             tqdm; metrics summed on the device
- :mod:`engine.optimization` the ``optimizer`` / ``schedule`` sections -> optim objects, resume
- :mod:`engine.amp`          torch.amp autocast / GradScaler, backward and optimizer step

A task's ``train.py`` owns its loop and calls these; there is no Trainer class.
"""
