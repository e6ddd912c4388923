#!/usr/bin/env bash
# The paper's WMT-14 En->De table (Transformer-base, test BLEU): every row x seed of
# configs/wmt14.yaml trained, each run in runs/wmt14/<version>/<row>/recipe/seed<N> (re-running
# resumes unfinished runs and skips finished ones), then every finished run evaluated
# (nmt.evaluate: the last 10 epoch checkpoints averaged, beam search, both BLEUs into its
# results.json). Prepare the data once first (docs/data.md):
#   python -m nmt.preprocess --config configs/wmt14.yaml --train ... --test ... \
#       --out-dir data/wmt14_en_de
#
#   bash scripts/wmt14.sh --gpus 8 --data-dir data/wmt14_en_de        # the whole current table
#   bash scripts/wmt14.sh --version v1 ...       # the first paper version (configs/v1/wmt14.yaml)
#   bash scripts/wmt14.sh --rows Adam,Apollo --seed-list 1,11 --dry-run
#   bash scripts/wmt14.sh ... -- amp=bf16              # key=value overrides for every run
#
# Options: --gpus N (per run; >1 uses torchrun; 0 = CPU), --data-dir D, --out-root R,
# --version V, --rows, --seeds N (the first N of the table's seeds) or --seed-list S1,S2,
# --plugin MODULE_OR_PATH (repeatable), --dry-run (print the commands). The first run that
# fails stops the sweep. Then:
#   python -m scripts.report runs/wmt14
# Rows, seeds and every hyperparameter come from the config; this script holds none.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

out_root=runs version=current dry_run=0 eval_args=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --) break ;;
    --out-root) out_root="${args[$((i + 1))]:-}" ;;
    --version) version="${args[$((i + 1))]:-}" ;;
    --data-dir) eval_args+=(--data-dir "${args[$((i + 1))]:-}") ;;
    --gpus) [[ "${args[$((i + 1))]:-}" == 0 ]] && eval_args+=(--device cpu) ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  esac
done

"$PY" -m scripts.sweep --prog "bash scripts/wmt14.sh" --table wmt14 "$@"
evaluate=("$PY" -m nmt.evaluate --run-dir "$out_root/wmt14/$version" "${eval_args[@]}")
if [[ $dry_run == 1 ]]; then
  echo "${evaluate[*]}"
else
  "${evaluate[@]}"
fi
