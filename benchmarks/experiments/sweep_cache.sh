#!/usr/bin/env bash
# The sweep's wall time with the shared teacher cache against without it (issue 10), measured
# side by side in one run through kdserve's own service (benchmarks/experiments/service_sweep.py):
# the same 6-point grid (temperature 2, 4, 8 x alpha 0.1, 0.5) of a ResNet-8 KD student, each
# point 2 epochs, once with KDSERVE_TEACHER_CACHE=true (one entry built in the sweep, then read
# by every point) and once with it false (every point runs the teacher in its loop).
# Two epochs keep the pair affordable on two cores; the cache's saving per point does not
# depend on the epoch count while it stays at most teacher_views (16).
#
# The teacher is cifar10_proof.sh's WRN-16-2 and student its ResNet-8. A sweep's wall time
# depends on their shapes, not on how well the teacher was trained, so without PROOF_OUT the
# script trains the same WRN-16-2 for one epoch to have weights to time.
#
# Usage (from the repository root): benchmarks/experiments/sweep_cache.sh OUT [PROOF_OUT]
#   PROOF_OUT is cifar10_proof.sh's OUT (its teacher/, teacher-arch.json and student.json).
set -euo pipefail
OUT=${1:?usage: $0 OUT [PROOF_OUT]}
PROOF=${2:-$OUT/proof}
TRAIN=../shared/data/cifar10/cifar10-train.tar.gz
mkdir -p "$OUT" "$PROOF"
if [ ! -f "$PROOF/teacher/student.safetensors" ]; then
    echo '{"family":"wrn","depth":16,"width":2}' > "$PROOF/teacher-arch.json"
    echo '{"family":"resnet","depth":8}' > "$PROOF/student.json"
    echo '{"method":"scratch","epochs":1,"augment":"crop_flip","val_split":0,"checkpoint":"last"}' > "$PROOF/teacher.json"
    .venv/bin/kdserve train --arch "$PROOF/teacher-arch.json" --data $TRAIN \
        --config "$PROOF/teacher.json" --out "$PROOF/teacher" --formats safetensors
fi
echo '{"method":"kd","epochs":2,"augment":"crop_flip","seed":0}' > "$OUT/base.json"
echo '{"temperature":[2,4,8],"alpha":[0.1,0.5]}' > "$OUT/grid.json"
for mode in cache no-cache; do
    flag=$([ $mode = no-cache ] && echo --no-cache || true)
    [ -f "$OUT/$mode/sweep.json" ] ||
        .venv/bin/python -m benchmarks.experiments.service_sweep "$OUT/$mode" --data $TRAIN \
            --teacher "$PROOF/teacher/student.safetensors" --teacher-arch "$PROOF/teacher-arch.json" \
            --student "$PROOF/student.json" --config "$OUT/base.json" --grid "$OUT/grid.json" $flag
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
on = json.loads((out / "cache/sweep.json").read_text())["wall_seconds"]
off = json.loads((out / "no-cache/sweep.json").read_text())["wall_seconds"]
print(f"6-point sweep, 2 epochs a point: with the cache {on:.0f} s, without {off:.0f} s: "
      f"{off / on:.2f}x faster with it")
PY
