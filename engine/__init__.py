"""Plumbing shared by the task trees (classification, language_model, nmt): small functions.

- :mod:`engine.config`       YAML table -> one flat, type-checked run config
- :mod:`engine.cli`          the common flags, ``--print-config``, ``--plugin``, clean exits
- :mod:`engine.distributed`  torchrun environment, DDP wrapping, rank-0 logging, all-reduce
- :mod:`engine.checkpoint`   atomic save / resume (model, optimizer, schedule, RNG, position)
- :mod:`engine.metrics`      run directory: config.json, metrics.jsonl, results.json, TB, tqdm
- :mod:`engine.optimization` the ``optimizer`` / ``schedule`` sections -> optim objects, resume
- :mod:`engine.amp`          torch.amp autocast / GradScaler, backward and optimizer step
- :mod:`engine.sweep`        rows x schedules x seeds of one table as commands (the scripts/)

A task's ``train.py`` owns its loop and calls these; there is no Trainer class.
"""
