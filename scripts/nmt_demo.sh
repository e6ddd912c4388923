#!/usr/bin/env bash
# The translation table's Adam and Apollo rows on the CPU, in minutes: a small Transformer of
# the paper's architecture (configs/nmt_demo.yaml) trained on about 9,000 real German-English
# sentence pairs, English -> German, then both evaluated (tokenized BLEU with compound
# splitting, and detokenized sacreBLEU) and the BLEU table printed by scripts/report.py.
#
#   bash scripts/nmt_demo.sh                       # -> runs/nmt_demo/
#   bash scripts/nmt_demo.sh --corpus my/pairs     # my/pairs.en + my/pairs.de instead
#   bash scripts/nmt_demo.sh --max-updates 60      # a smoke test
#
# The sentence pairs are the example sentences of Debian's trans-de-en (the Ding dictionary,
# GPL-2+), fetched at run time without installing it (apt-get download + dpkg -x) into
# --cache (default ~/.cache/apollo-optim); see docs/data.md. Never committed to this repository.
#
# Options: --out-dir D (default runs), --corpus PREFIX, --cache DIR, --rows R1,R2 (default
# Adam,Apollo), --max-updates N, --jobs J (runs at a time, default 2, one thread each).
# Every hyperparameter comes from the configs; this script holds none. Re-running resumes
# unfinished runs and skips what is done.
set -euo pipefail
repo="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
config="$repo/configs/nmt_demo.yaml"

out_dir=runs corpus="" cache="${XDG_CACHE_HOME:-$HOME/.cache}/apollo-optim" rows="Adam,Apollo"
jobs=2 train_args=()
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out-dir) out_dir="${2:?--out-dir needs a directory}"; shift 2 ;;
    --corpus) corpus="${2:?--corpus needs a prefix}"; shift 2 ;;
    --cache) cache="${2:?--cache needs a directory}"; shift 2 ;;
    --rows) rows="${2:?--rows needs row names}"; shift 2 ;;
    --max-updates) train_args+=(--max-updates "${2:?--max-updates needs a number}"); shift 2 ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see bash scripts/nmt_demo.sh --help)" >&2; exit 2 ;;
  esac
done

[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs needs a number >= 1, got $jobs" >&2; exit 2; }

start=$SECONDS
demo="$out_dir/nmt_demo"
mkdir -p "$demo"
if [[ -z "$corpus" ]]; then
  dict="$cache/trans-de-en/usr/share/trans/de-en"
  if [[ ! -f "$dict" ]]; then
    echo "fetching Debian's trans-de-en into $cache (apt-get download, not installed)"
    command -v apt-get >/dev/null || { echo "error: no apt-get here; pass --corpus PREFIX" >&2; exit 2; }
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download trans-de-en >/dev/null 2>&1) \
      || { rm -rf "$tmp"; echo "error: apt-get download trans-de-en failed (run apt-get update?)" >&2; exit 2; }
    mkdir -p "$cache/trans-de-en"
    dpkg -x "$tmp"/trans-de-en_*.deb "$cache/trans-de-en"
    rm -rf "$tmp"
  fi
  "$PY" -m nmt.ding --dict "$dict" --out-dir "$demo/corpus"
else
  "$PY" -m nmt.ding --corpus "$corpus" --out-dir "$demo/corpus"
fi
"$PY" -m nmt.preprocess --config "$config" --train "$demo/corpus/train" \
  --test "$demo/corpus/test" --out-dir "$demo/data"

# One process per row, one thread each (a small model gains little from threads, and two
# processes use both cores of a small machine); at most --jobs at a time.
IFS=, read -ra row_list <<< "$rows"
log_of() { echo "$demo/current/$1/recipe/seed1/stdout.log"; }
# Progress: each row's new epoch lines (valid loss, tokens/s) as they are written.
progress() {
  local -A seen=()
  local row n
  for row in "${row_list[@]}"; do  # a resumed run's log holds its earlier epochs
    seen[$row]=$(grep -c "valid loss" "$(log_of "$row")" 2>/dev/null) || seen[$row]=0
  done
  while sleep 10; do
    for row in "${row_list[@]}"; do
      n=$(grep -c "valid loss" "$(log_of "$row")" 2>/dev/null) || n=0
      if (( n > ${seen[$row]:-0} )); then
        grep "valid loss" "$(log_of "$row")" | tail -n "+$(( ${seen[$row]:-0} + 1 ))" \
          | sed "s/^[0-9-]* [0-9:]* /  $row: /"
        seen[$row]=$n
      fi
    done
  done
}
pids=() failed=0
progress &
progress_pid=$!
# Background jobs of a script ignore Ctrl-C: stop them with it (re-running resumes them).
trap 'kill "$progress_pid" "${pids[@]}" 2>/dev/null || true' EXIT
trap 'echo "interrupted; the same command resumes" >&2; exit 130' INT TERM
finish() {  # wait for the run with index $1, report its failure
  if ! wait "${pids[$1]}"; then
    echo "error: training ${row_list[$1]} failed; its log ends:" >&2
    tail -n 5 "$(log_of "${row_list[$1]}")" >&2
    failed=1
  fi
}
for i in "${!row_list[@]}"; do
  row="${row_list[$i]}"
  (( i < jobs )) || finish $((i - jobs))
  run_dir="$demo/current/$row/recipe/seed1"
  mkdir -p "$run_dir"
  echo "training $row -> $run_dir (log: $run_dir/stdout.log)"
  OMP_NUM_THREADS=1 "$PY" -m nmt.train --config "$config" --row "$row" --device cpu \
    --data-dir "$demo/data" --out-dir "$run_dir" "${train_args[@]}" >> "$run_dir/stdout.log" 2>&1 &
  pids+=($!)
done
for (( i = ${#pids[@]} > jobs ? ${#pids[@]} - jobs : 0; i < ${#pids[@]}; i++ )); do finish "$i"; done
kill "$progress_pid" 2>/dev/null || true
[[ $failed == 0 ]] || exit 1
for row in "${row_list[@]}"; do
  grep "valid loss" "$(log_of "$row")" | tail -n 1 | sed "s/^[0-9-]* [0-9:]* /  $row: /"  || true
done
echo "trained in $((SECONDS - start)) s; translating the test set"
pids=()
for row in "${row_list[@]}"; do
  OMP_NUM_THREADS=1 "$PY" -m nmt.evaluate --run-dir "$demo/current/$row/recipe/seed1" \
    --device cpu &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
echo
"$PY" -m scripts.report "$demo/current" --out "$demo/report" --no-plots
echo "total: $((SECONDS - start)) s"
