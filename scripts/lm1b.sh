#!/usr/bin/env bash
# The paper's One Billion Words table (2-layer LSTM, test perplexity): every row x seed of
# configs/lm1b.yaml, each run in runs/lm1b/<version>/<row>/milestone/seed<N> (re-running resumes
# unfinished runs and skips finished ones). Preprocess the corpus into LMDB once first:
#   python -m language_model.preprocess --train-dir .../training-monolingual.tokenized.shuffled \
#       --heldout-dir .../heldout-monolingual.tokenized.shuffled --vocab 1b_word_vocab.txt \
#       --out-dir data/lm1b.lmdb
#
#   bash scripts/lm1b.sh --data-dir data/lm1b.lmdb                # the whole current table
#   bash scripts/lm1b.sh --version v1 ...       # the first paper version (configs/v1/lm1b.yaml)
#   bash scripts/lm1b.sh --rows Adam,Apollo --seed-list 1,101 --dry-run
#   bash scripts/lm1b.sh ... -- amp=bf16              # key=value overrides for every run
#
# Options: --gpus N (per run; >1 uses torchrun; 0 = CPU), --data-dir D, --out-root R,
# --version V, --rows, --seeds N (the first N of the table's seeds)
# or --seed-list S1,S2, --plugin MODULE_OR_PATH (repeatable), --dry-run (print the commands),
# --jobs-per-gpu N (N runs side by side on each GPU of CUDA_VISIBLE_DEVICES); see --help.
# The first run that fails stops the sweep. Rows, seeds and every hyperparameter come
# from the config; this script holds none.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m scripts.sweep --prog "bash scripts/lm1b.sh" --table lm1b "$@"
