#!/usr/bin/env bash
# The product's life cycle on the built-in digits data, one short line per step (make demo):
# train the first 8 classes (4 tasks of 2) -> export with int8 -> predict held-out images ->
# update the package with the 2 held-back classes on "the device" -> predict again -> info -> rollback.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/demo}
ME="$BIN/memo-edge"

step() { printf '\n== %s\n' "$*"; }

# Held-back classes as class folders (what a device would collect), and test images to predict.
"$BIN/python" - "$OUT" <<'EOF'
import shutil, sys
from pathlib import Path
from PIL import Image
from memo_edge.data.datasets import load_dataset
from memo_edge.data.scenario import make_class_order

out = Path(sys.argv[1])
digits, order = load_dataset("digits"), make_class_order(10, seed=1993)  # the order train uses
for sub in ("new-classes", "images"):
    shutil.rmtree(out / sub, ignore_errors=True)
def save(source, label, folder, count=None):
    idx = [i for i, y in enumerate(source.labels) if y == label][:count]
    (folder).mkdir(parents=True, exist_ok=True)
    for i, image in zip(idx, source.take(idx)):
        Image.fromarray(image).save(folder / f"{i}.png")
for c in order[8:]:  # held back from training: learned on the device
    save(digits.train, c, out / "new-classes" / digits.class_names[c])
    save(digits.test, c, out / "images" / "new" / digits.class_names[c], 5)
for c in order[:8:2]:  # some classes the workstation run learned
    save(digits.test, c, out / "images" / "old" / digits.class_names[c], 5)
EOF

# predict's JSON lines -> "N images of classes [...]: K predicted right" (each image's folder names its class)
SUMMARY='
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
truth = [row["input"].split("/")[-2] for row in rows]
right = sum(row["top"][0]["class"] == t for row, t in zip(rows, truth))
print(f"{len(rows)} images of classes {sorted(set(truth))}: {right} predicted right")'
summarise() { "$BIN/python" -c "$SUMMARY"; }

step "1. train on the workstation: digits, first 8 classes of the order, 4 tasks of 2"
"$ME" train --dataset digits --classes 8 --scenario B0Inc2 --backbone resnet32 --init-epochs 10 --epochs 8 \
    --batch-size 32 --schedule cosine --memory 200 --device cpu --out "$OUT/run" --force
# The device's fixed budget: room for the model after all 5 tasks plus 200 exemplars of 3,072 B.
TOTAL=$("$BIN/python" -c "from memo_edge.model.methods import METHODS, method_model_bytes as m; print(m(METHODS['memo'], 'resnet32', 5) + 200 * 3072)")
step "2. export a package (ONNX + int8, verified against PyTorch), budget $TOTAL B for model + exemplars"
"$ME" export "$OUT/run" --out "$OUT/pkg" --int8 --total-budget "$TOTAL" --force
step "3. predict on the device (torch-free): old classes, then the 2 classes it has never seen"
"$ME" predict "$OUT/pkg" "$OUT/images/old" 2>/dev/null | summarise
"$ME" predict "$OUT/pkg" "$OUT/images/new" 2>/dev/null | summarise
step "4. update on the device: learn the 2 new classes inside the same byte budget"
"$ME" update "$OUT/pkg" --data "$OUT/new-classes" --epochs 8 --batch-size 32 --device cpu
step "5. predict again: the new classes are recognised, the old ones kept"
"$ME" predict "$OUT/pkg" "$OUT/images/new" 2>/dev/null | summarise
"$ME" predict "$OUT/pkg" "$OUT/images/old" 2>/dev/null | summarise
step "6. info: the model grew, the exemplars shrank, the total stayed"
"$ME" info "$OUT/pkg" --version 1 | grep "^budget" | sed 's/^/version 1 /'
"$ME" info "$OUT/pkg" | grep -E "^(budget|package check)" | sed 's/^budget/version 2 budget/'
step "7. rollback to the version before the update"
"$ME" rollback "$OUT/pkg"
