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
#
# Options: --out-dir D (default runs: each run in D/<table>/<version>/<row>/cosine/seed<N>, the
# table and plots in D/<table>/report), --seeds N (the first N of the table's seed list, default
# 3; --seed-list S1,S2 names seeds instead), --rows R1,R2, --epochs N, --jobs J (runs at a time,
# default 2), --config FILE (default configs/quickstart.yaml), --plugin MODULE_OR_PATH
# (repeatable), --dry-run (print the training commands and stop); after "--", key=value
# overrides for every run. The first run that fails stops the table with its one-line error.
#
# Each run is `python -m classification.train --config configs/quickstart.yaml --row ROW
# --schedule cosine --seed N --device cpu` (configs/quickstart.yaml states the task, the schedule
# and how warmup is scaled); every hyperparameter comes from the configs, none from this script.
# Re-running resumes unfinished runs and skips finished ones; a run directory that holds a run
# of another length (an earlier --epochs 3) is refused, not mixed into the table: use another
# --out-dir. The report covers every run of the table under --out-dir. Paths are relative to
# the directory you run it from (from the repository root, as in the README, everything lands
# in runs/quickstart/).
set -euo pipefail
repo="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

out_dir=runs seeds=3 seed_list="" jobs=2 config="$repo/configs/quickstart.yaml"
table_args=() train_args=() dry_run=0
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out-dir) out_dir="${2:?--out-dir needs a directory}"; shift 2 ;;
    --seeds) seeds="${2:?--seeds needs a number}"; shift 2 ;;
    --seed-list) seed_list="${2:?--seed-list needs seeds, e.g. 1,101}"; shift 2 ;;
    --rows) table_args+=(--rows "${2:?--rows needs row names}"); shift 2 ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    --plugin) table_args+=(--plugin "${2:?--plugin needs a module or path}"); shift 2 ;;
    --epochs) train_args+=(--epochs "${2:?--epochs needs a number}"); shift 2 ;;
    --dry-run) table_args+=(--dry-run); dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args+=("$@"); break ;;
    *) echo "error: unknown option $1 (see bash scripts/quickstart.sh --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$seeds" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --seeds is a count (the first N of the table's seeds), got '$seeds';" \
    "name seeds with --seed-list" >&2; exit 2
fi
seed_args=(--seeds "$seeds")
[[ -n "$seed_list" ]] && seed_args=(--seed-list "$seed_list")

start=$SECONDS
table="$("$PY" -c 'import sys; from engine.config import load_table
try: print(load_table(sys.argv[1]).get("table") or "")
except ValueError as e: sys.exit(f"error: {e}")' "$config")" || exit 2
"$PY" -m scripts.run_table --config "$config" "${seed_args[@]}" --out-root "$out_dir" \
  --jobs "$jobs" "${table_args[@]}" -- "${train_args[@]}"
[[ $dry_run == 1 ]] && exit 0
echo
"$PY" -m scripts.report "$out_dir/$table" --out "$out_dir/$table/report"
echo "total: $((SECONDS - start)) s"
