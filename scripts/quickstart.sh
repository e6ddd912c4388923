#!/usr/bin/env bash
# The main job: every row of the paper's current CIFAR-10 table (SGD, Adam*, RAdam*, Adam, RAdam,
# AdaBelief, AdaHessian, Apollo, ApolloW) on scikit-learn's handwritten digits with a small CNN,
# on the CPU, in a few minutes; then the comparison table (test accuracy "mean (std)" over seeds,
# final training loss) and PNG curves, written by scripts/report.py.
#
#   bash scripts/quickstart.sh                          # 9 rows x 3 seeds -> runs/quickstart/
#   bash scripts/quickstart.sh --out-dir D --seeds 5    # elsewhere, with the table's first 5 seeds
#   bash scripts/quickstart.sh --rows SGD,Apollo --seeds 1 --epochs 3     # a smoke test
#   bash scripts/quickstart.sh --config my_table.yaml --plugin my_optimizer.py --rows MyOpt
#                                                       # your optimizer: docs/adding_an_optimizer.md
#   bash scripts/quickstart.sh --launcher slurm --time 30  # as a SLURM job array: docs/cluster.md
#
# Each run is `python -m classification.train --config configs/quickstart.yaml --row ROW
# --schedule cosine --seed N --device cpu` (--dry-run prints them; configs/quickstart.yaml states
# the task, the schedule, how warmup is scaled and how many seeds run by default); every
# hyperparameter comes from the configs, none from this script. Each run goes to
# <out-dir>/quickstart/<version>/<row>/cosine/seed<N>, the table and plots to
# <out-dir>/quickstart/report/; the report covers every run of the table under --out-dir.
# Re-running resumes unfinished runs and skips finished ones; a run directory that holds a run
# of another length (an earlier --epochs 3) is refused, not mixed into the table: use another
# --out-dir. The first run that fails stops the table with its one-line error. Paths are
# relative to the directory you run it from.
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m scripts.run_table --script quickstart "$@"
