#!/usr/bin/env bash
# The translation table's Adam and Apollo rows on the CPU, in minutes: a small Transformer of
# the paper's architecture (configs/nmt_demo.yaml) trained on about 9,000 real German-English
# sentence pairs, English -> German, then both evaluated (tokenized BLEU with compound
# splitting, and detokenized sacreBLEU) and their table printed by python -m nmt.table.
#
#   bash scripts/nmt_demo.sh                       # -> runs/nmt_demo/
#   bash scripts/nmt_demo.sh --corpus my/pairs     # my/pairs.en + my/pairs.de instead
#   bash scripts/nmt_demo.sh --max-updates 60      # a smoke test
#
# The sentence pairs are the example sentences of Debian's trans-de-en (the Ding dictionary,
# GPL-2+), fetched at run time without installing it (apt-get download + dpkg -x) into
# --cache DIR (default ~/.cache/apollo-optim); see docs/data.md. Never committed to this
# repository. --corpus PREFIX and --cache DIR are this script's own options; every other one is
# python -m scripts.run_table's (listed below: --rows, --seeds, --out-dir, --jobs,
# --max-updates, ...), checked before the data is prepared. The data goes to
# <out-dir>/nmt_demo/data, each run to <out-dir>/nmt_demo/current/<row>/recipe/seed<N>, one
# process per run on one thread (--jobs at a time); each epoch's valid loss is printed as it
# comes. Every hyperparameter comes from the configs; this script holds none. Ctrl-C stops it;
# re-running resumes unfinished runs and skips what is done.
set -euo pipefail
repo="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
table=(-m scripts.run_table --script nmt_demo)

corpus="" cache="${XDG_CACHE_HOME:-$HOME/.cache}/apollo-optim" opts=() extra=()
while [[ $# -gt 0 ]]; do  # take out this script's options; the rest goes to scripts.run_table
  case "$1" in
    --corpus) corpus="${2:?--corpus needs a prefix}"; shift 2 ;;
    --cache) cache="${2:?--cache needs a directory}"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) opts+=("$1"); shift ;;
  esac
done
out_dir=runs  # where scripts.run_table puts the runs: the data goes beside them
for ((i = 0; i < ${#opts[@]}; i++)); do
  case "${opts[i]}" in
    --out-dir|--out-root) out_dir="${opts[i+1]:-}" ;;
    --out-dir=*|--out-root=*) out_dir="${opts[i]#*=}" ;;
  esac
done
demo="$out_dir/nmt_demo"
extra+=("data_dir=$demo/data")  # every run reads the data prepared here
for opt in "${opts[@]}"; do  # nothing to prepare for these
  case "$opt" in -h|--help|--dry-run) exec "$PY" "${table[@]}" "${opts[@]}" -- "${extra[@]}" ;; esac
done
"$PY" "${table[@]}" "${opts[@]}" --dry-run -- "${extra[@]}" > /dev/null  # bad options: one line

start=$SECONDS
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
"$PY" -m nmt.preprocess --config "$repo/configs/nmt_demo.yaml" --train "$demo/corpus/train" \
  --test "$demo/corpus/test" --out-dir "$demo/data"
echo "data ready in $((SECONDS - start)) s"

# Progress: each run's new epoch lines (valid loss, tokens/s) as its stdout.log gets them, every
# 10 s and once more when the runs end (the poller's TERM handler shows what came since).
progress() {
  local -A seen=()
  local log n run
  for log in "$demo"/current/*/*/seed*/stdout.log; do  # a resumed run's log has earlier epochs
    [[ -f "$log" ]] && seen[$log]=$(grep -c "valid loss" "$log" || true)
  done
  show() {
    for log in "$demo"/current/*/*/seed*/stdout.log; do
      [[ -f "$log" ]] || continue
      n=$(grep -c "valid loss" "$log" || true)
      if (( n > ${seen[$log]:-0} )); then
        run="${log#"$demo"/current/}"
        grep "valid loss" "$log" | tail -n "+$(( ${seen[$log]:-0} + 1 ))" \
          | sed "s|^[0-9-]* [0-9:]* |  ${run%/stdout.log}: |"
        seen[$log]=$n
      fi
    done
  }
  trap 'kill "$sleeper" 2>/dev/null; show; exit 0' TERM
  while true; do sleep 10 & sleeper=$!; wait "$sleeper"; show; done
}
progress &
progress_pid=$!
trap 'kill "$progress_pid" 2>/dev/null || true' EXIT
trap 'echo "interrupted; the same command resumes" >&2; exit 130' INT TERM
"$PY" "${table[@]}" "${opts[@]}" --no-report -- "${extra[@]}"
kill "$progress_pid" 2>/dev/null && wait "$progress_pid" 2>/dev/null || true
echo
"$PY" -m nmt.table "$demo/current"
echo "total: $((SECONDS - start)) s"
