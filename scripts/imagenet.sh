#!/usr/bin/env bash
# The paper's ResNeXt-50 on ImageNet table: every row x schedule x seed of configs/imagenet.yaml,
# each run in runs/imagenet/<version>/<row>/<schedule>/seed<N> (re-running resumes / skips finished runs).
#
#   bash scripts/imagenet.sh --gpus 8 --data-dir data/imagenet                 # the whole current table
#   bash scripts/imagenet.sh --version v1 ...    # the first paper version (configs/v1/imagenet.yaml)
#   bash scripts/imagenet.sh --rows SGD,Apollo --schedules cosine --seed-list 1,101 --dry-run
#   bash scripts/imagenet.sh ... -- amp=bf16           # key=value overrides for every run
#
# Options: --gpus N (per run; >1 uses torchrun; 0 = CPU), --data-dir D, --out-root R,
# --version V, --rows, --schedules, --seeds N (the first N of the table's seeds)
# or --seed-list S1,S2, --plugin MODULE_OR_PATH (repeatable), --dry-run (print the commands),
# --jobs-per-gpu N (N runs side by side on each GPU of CUDA_VISIBLE_DEVICES); see --help.
# The first run that fails stops the sweep. Rows, schedules, seeds and every hyperparameter come
# from the config; this script holds none.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m scripts.sweep --prog "bash scripts/imagenet.sh" --table imagenet "$@"
