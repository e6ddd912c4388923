#!/usr/bin/env bash
# The paper's WMT-14 En->De table (Transformer-base, test BLEU): every row x seed of
# configs/wmt14.yaml trained, each run in <out-dir>/wmt14/<version>/<row>/recipe/seed<N>, then
# every finished run of the table evaluated (nmt.evaluate: the last 10 epoch checkpoints
# averaged, beam search, both BLEUs into its results.json; runs evaluated already are skipped).
# Re-running resumes unfinished runs and skips finished ones; the first run that fails stops the
# table. Rows, seeds and every hyperparameter come from the config; this script holds none.
# Paths are relative to the directory you run it from. Prepare the data once first
# (docs/data.md):
#   python -m nmt.preprocess --config configs/wmt14.yaml --train ... --test ... \
#       --out-dir data/wmt14_en_de
#
#   bash scripts/wmt14.sh --gpus 8 --data-dir data/wmt14_en_de                # the whole table
#   bash scripts/wmt14.sh --version v1 --gpus 8 --data-dir data/wmt14_en_de   # the first version
#   bash scripts/wmt14.sh --rows Adam,Apollo --seed-list 1,11 --dry-run
#   bash scripts/wmt14.sh --gpus 8 --data-dir data/wmt14_en_de -- amp=bf16    # for every run
#   bash scripts/wmt14.sh --gpus 8 --data-dir /shared/wmt14_en_de --launcher slurm --time 2-00:00:00
#                                            # a SLURM job array, one task per run: docs/cluster.md
#
# Then: python -m scripts.report runs/wmt14     (the table; written to runs/wmt14/report/)
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m scripts.sweep --script wmt14 "$@"
