#!/usr/bin/env bash
# The paper's ResNet-110 on CIFAR-10 table: every row x schedule x seed of configs/cifar10.yaml,
# each run in <out-dir>/cifar10/<version>/<row>/<schedule>/seed<N>. Re-running resumes
# unfinished runs and skips finished ones; the first run that fails stops the table. Rows,
# schedules, seeds and every hyperparameter come from the config; this script holds none.
# Paths are relative to the directory you run it from. Data: docs/data.md.
#
#   bash scripts/cifar10.sh --data-dir data/cifar10                  # the whole current table
#   bash scripts/cifar10.sh --version v1 --data-dir data/cifar10     # the first paper version
#   bash scripts/cifar10.sh --rows SGD,Apollo --schedules cosine --seed-list 1,101 --dry-run
#   bash scripts/cifar10.sh --data-dir data/cifar10 -- amp=bf16      # overrides for every run
#   bash scripts/cifar10.sh --data-dir data/cifar10 --jobs-per-gpu 4 -- --compile reduce-overhead
#                                                # 4 runs side by side per GPU: docs/performance.md
#   bash scripts/cifar10.sh --data-dir /shared/cifar10 --launcher slurm --time 12:00:00
#                                            # a SLURM job array, one task per run: docs/cluster.md
#
# Then: python -m scripts.report runs/cifar10    (the table; written to runs/cifar10/report/)
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m scripts.sweep --script cifar10 "$@"
