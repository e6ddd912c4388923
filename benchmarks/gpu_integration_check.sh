#!/usr/bin/env bash
# Mixed precision in the training entry points, on one CUDA GPU (about 2 minutes on an H200).
#
#   bash benchmarks/gpu_integration_check.sh [WORK_DIR]
#
# 1. language_model.train --amp bf16: a few updates of a small LSTM with adaptive softmax on a
#    tiny corpus (the adaptive softmax once crashed under CUDA autocast in index_copy_). Needs
#    the lmdb package; without it the same model, loss and optimizer step run directly under
#    bf16 autocast, and the script says so.
# 2. classification.train --row AdaHessian (ResNet-110) for 50 updates on synthetic CIFAR-10
#    pickles whose classes differ in brightness, with --amp none and --amp fp16 (GradScaler).
#    fp16 once never learned (every Hessian estimate NaN: BatchNorm's backward differentiated
#    in float16). Passes when the fp16 run's test accuracy is well above chance (>= 20%) and
#    within 10 points of the float32 run's.
# Exit status 0 when every check passes; the last line says PASS or FAIL.
# A smoke test of the script itself on a CPU (the figures mean nothing there):
#   DEVICE=cpu STEPS=2 CLS_MODEL=cifar_resnet8 bash benchmarks/gpu_integration_check.sh
# (NO_LMDB=1 takes the path for a machine without lmdb.)
set -euo pipefail
repo="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}" STEPS="${STEPS:-50}" CLS_MODEL="${CLS_MODEL:-cifar_resnet110}"
export DEVICE
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cd "$repo"
"$PY" -c "import os, torch; cuda = os.environ['DEVICE'] == 'cuda'; \
assert torch.cuda.is_available() or not cuda, 'no CUDA device'; \
print('torch', torch.__version__, torch.cuda.get_device_name() if cuda else 'cpu')"

# ------------------------------------------------------------------ 1. LM, bf16
if [[ -z "${NO_LMDB:-}" ]] && "$PY" -c "import lmdb" 2>/dev/null; then
  "$PY" - "$work" <<'EOF'
import random, sys
from pathlib import Path
from language_model.preprocess import preprocess
root = Path(sys.argv[1]) / "lm"
rng = random.Random(0)
words = [f"w{i}" for i in range(300)]
for sub, name, n in [("training-monolingual.tokenized.shuffled", "news.en-00001-of-00100", 400),
                     ("heldout-monolingual.tokenized.shuffled", "news.en.heldout-00000-of-00050", 100)]:
    (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(n)]
    (root / sub / name).write_text("\n".join(lines) + "\n")
(root / "vocab.txt").write_text("\n".join(["<S> 9", "</S> 9", "<UNK> 9"] + [f"{w} 5" for w in words]) + "\n")
preprocess(root / "training-monolingual.tokenized.shuffled", root / "heldout-monolingual.tokenized.shuffled",
           root / "vocab.txt", root / "db", workers=1)
EOF
  for row in Apollo Adam; do
    "$PY" -m language_model.train --config configs/lm1b.yaml --row "$row" --data-dir "$work/lm/db" \
      --out-dir "$work/lm_bf16_$row" --epochs 1 --max-steps-per-epoch 20 --device "$DEVICE" --amp bf16 \
      batch_size=32 eval_batch_size=32 bptt=20 model.embed_dim=64 model.hidden_size=128 \
      "model.cutoffs=[50,150]" log_every=0
    "$PY" - "$work/lm_bf16_$row/results.json" <<'EOF'
import json, math, sys
r = json.load(open(sys.argv[1]))
ppl = r["final"]["test_ppl"]
print(f"LM bf16 {r['row']}: test ppl {ppl:.1f} after {r['epochs_completed']} epoch")
assert r["finished"] and math.isfinite(ppl), "LM bf16 run did not finish with a finite perplexity"
EOF
  done
else
  echo "lmdb is not installed: checking the LM model under bf16 autocast directly (not the entry point)"
  "$PY" - <<'EOF'
import os
import torch
import apollo_optim as optim
from engine import amp
from language_model.model import LSTMLanguageModel
dev = torch.device(os.environ["DEVICE"])
torch.manual_seed(0)
model = LSTMLanguageModel(300, embed_dim=64, hidden_size=128, num_layers=2, dropout=0.1,
                          cutoffs=[50, 150], div_value=4.0).to(dev)
for name in ("apollo", "adahessian"):
    opt, spec = optim.create(name, model.parameters(), lr=0.01), optim.get(name)
    hidden = model.init_hidden(8)
    for step in range(5):
        x = torch.randint(0, 300, (8, 20), device=dev)
        with amp.autocast(dev, "bf16"):
            nll, count, hidden = model(x, x.roll(-1, 1), hidden)
        hidden = tuple(h.detach() for h in hidden)
        opt.zero_grad(set_to_none=True)
        amp.backward(nll / count, None, create_graph=spec.needs_create_graph)
        amp.step(opt, None, clip_norm=0.25)
        assert torch.isfinite(nll), f"{name}: non-finite loss under bf16"
    print(f"LM model bf16 {name}: 5 steps, loss {float(nll / count):.3f}")
EOF
fi

# ------------------------------------------------------------------ 2. AdaHessian, fp16 vs none
"$PY" - "$work/cifar" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
from classification.data import CIFAR
folder, train_files, test_files, label_key = CIFAR["cifar10"]
out = Path(sys.argv[1]) / folder
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name, n in [(f, 1280) for f in train_files] + [(f, 1000) for f in test_files]:
    labels = rng.integers(0, 10, size=n)
    data = rng.integers(0, 64, size=(n, 3072)) + labels[:, None] * 19  # brightness by class
    batch = {b"data": data.clip(0, 255).astype(np.uint8), label_key.encode(): labels.tolist()}
    (out / name).write_bytes(pickle.dumps(batch))
EOF
for mode in none fp16; do
  "$PY" -m classification.train --config configs/cifar10.yaml --row AdaHessian --schedule cosine \
    --data-dir "$work/cifar" --out-dir "$work/cls_$mode" --epochs 1 --max-steps-per-epoch "$STEPS" \
    --device "$DEVICE" --amp "$mode" --workers 4 model="$CLS_MODEL"
done
"$PY" - "$work" <<'EOF'
import json, sys
acc = {}
for mode in ("none", "fp16"):
    r = json.load(open(f"{sys.argv[1]}/cls_{mode}/results.json"))
    acc[mode] = r["final"]["test_acc1"]
    print(f"AdaHessian --amp {mode}: test acc {acc[mode]:.1f}%, train loss {r['final']['train_loss']:.3f}")
ok = acc["fp16"] >= 20 and acc["fp16"] >= acc["none"] - 10
print("PASS" if ok else "FAIL: AdaHessian under fp16 does not learn like float32")
sys.exit(0 if ok else 1)
EOF
