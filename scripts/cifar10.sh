#!/usr/bin/env bash
# The paper's ResNet-110 on CIFAR-10 table: every row x schedule x seed of configs/cifar10.yaml,
# each run in runs/cifar10/<version>/<row>/<schedule>/seed<N> (re-running resumes / skips finished runs).
#
#   bash scripts/cifar10.sh --data-dir data/cifar10                 # the whole current table
#   bash scripts/cifar10.sh --version v1 ...    # the first paper version (configs/v1/cifar10.yaml)
#   bash scripts/cifar10.sh --rows SGD,Apollo --schedules cosine --seed-list 1,101 --dry-run
#   bash scripts/cifar10.sh ... -- amp=bf16           # key=value overrides for every run
#   bash scripts/cifar10.sh --jobs-per-gpu 4 -- amp=bf16 --compile reduce-overhead  # see docs/performance.md
#
# Options: --gpus N (per run; >1 uses torchrun; 0 = CPU), --data-dir D, --out-root R,
# --version V, --rows, --schedules, --seeds N (the first N of the table's seeds)
# or --seed-list S1,S2, --plugin MODULE_OR_PATH (repeatable), --dry-run (print the commands),
# --jobs-per-gpu N (N runs side by side on each GPU of CUDA_VISIBLE_DEVICES); see --help.
# The first run that fails stops the sweep. Rows, schedules, seeds and every hyperparameter come
# from the config; this script holds none.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m scripts.sweep --prog "bash scripts/cifar10.sh" --table cifar10 "$@"
