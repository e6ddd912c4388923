#!/usr/bin/env bash
# The paper's One Billion Words table (2-layer LSTM, test perplexity): every row x seed of
# configs/lm1b.yaml, each run in <out-dir>/lm1b/<version>/<row>/milestone/seed<N>. Re-running
# resumes unfinished runs and skips finished ones; the first run that fails stops the table.
# Rows, seeds and every hyperparameter come from the config; this script holds none. Paths are
# relative to the directory you run it from. Preprocess the corpus into LMDB once first
# (docs/data.md):
#   python -m language_model.preprocess --train-dir .../training-monolingual.tokenized.shuffled \
#       --heldout-dir .../heldout-monolingual.tokenized.shuffled --vocab 1b_word_vocab.txt \
#       --out-dir data/lm1b.lmdb
#
#   bash scripts/lm1b.sh --data-dir data/lm1b.lmdb                  # the whole current table
#   bash scripts/lm1b.sh --version v1 --data-dir data/lm1b.lmdb     # the first paper version
#   bash scripts/lm1b.sh --rows Adam,Apollo --seed-list 1,101 --dry-run
#   bash scripts/lm1b.sh --data-dir data/lm1b.lmdb -- amp=bf16      # overrides for every run
#   bash scripts/lm1b.sh --data-dir /shared/lm1b.lmdb --launcher slurm --time 2-00:00:00
#                                            # a SLURM job array, one task per run: docs/cluster.md
#
# Then: python -m scripts.report runs/lm1b      (the table; written to runs/lm1b/report/)
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m scripts.sweep --script lm1b "$@"
