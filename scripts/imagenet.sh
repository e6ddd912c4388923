#!/usr/bin/env bash
# The paper's ResNeXt-50 on ImageNet table: every row x schedule x seed of configs/imagenet.yaml,
# each run in <out-dir>/imagenet/<version>/<row>/<schedule>/seed<N>. Re-running resumes
# unfinished runs and skips finished ones; the first run that fails stops the table. Rows,
# schedules, seeds and every hyperparameter come from the config; this script holds none.
# Paths are relative to the directory you run it from. Data: docs/data.md.
#
#   bash scripts/imagenet.sh --gpus 8 --data-dir data/imagenet               # the whole table
#   bash scripts/imagenet.sh --version v1 --gpus 8 --data-dir data/imagenet  # the first version
#   bash scripts/imagenet.sh --rows SGD,Apollo --schedules cosine --seed-list 1,101 --dry-run
#   bash scripts/imagenet.sh --gpus 8 --data-dir data/imagenet -- amp=bf16   # for every run
#   bash scripts/imagenet.sh --gpus 8 --data-dir /shared/imagenet --launcher slurm --time 2-00:00:00
#                                            # a SLURM job array, one task per run: docs/cluster.md
#
# Then: python -m scripts.report runs/imagenet   (the table; written to runs/imagenet/report/)
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m scripts.sweep --script imagenet "$@"
