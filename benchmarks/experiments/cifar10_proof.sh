#!/usr/bin/env bash
# CIFAR-10 with a strong teacher, through kdserve's own CLI and service (issue 10):
#   1. a WRN-16-2 teacher trained by a scratch job, 80 epochs, crop + flip and a 16-pixel
#      cutout (DeVries & Taylor 2017) (kdserve train);
#   2. a sweep over temperature × alpha for a ResNet-8 student on a validation split carved
#      from the training set (kdserve up + POST /v1/sweeps: benchmarks/experiments/service_sweep.py);
#   3. the student three ways, 3 seeds each, the same epochs and augmentation: scratch, KD with
#      the sweep's T and alpha, FitNets with "hint": "auto" (kdserve train / distill, the
#      exported epoch chosen on the validation split, scored on the 10,000 test images);
#   4. the table (benchmarks/experiments/summarize.py).
# Every step is skipped when its output exists, so the script resumes.
#
# Usage (from the repository root): benchmarks/experiments/cifar10_proof.sh OUT [SEEDS...]
set -euo pipefail
OUT=${1:?usage: $0 OUT [SEEDS...]}
shift
SEEDS=${*:-0 1 2}
K=.venv/bin/kdserve
D=../shared/data/cifar10
TRAIN=$D/cifar10-train.tar.gz
TEST=$D/cifar10-test.zip
mkdir -p "$OUT"
echo '{"family":"wrn","depth":16,"width":2}' > "$OUT/teacher-arch.json"
echo '{"family":"resnet","depth":8}' > "$OUT/student.json"

# 1. The teacher (its exported epoch is the last: the test set is only for its score).
echo '{"method":"scratch","epochs":80,"lr":0.1,"nesterov":true,"augment":"crop_flip","cutout":16,
  "val_split":0,"checkpoint":"last","seed":0}' > "$OUT/teacher.json"
[ -f "$OUT/teacher/report.json" ] ||
    $K train --arch "$OUT/teacher-arch.json" --data $TRAIN --val $TEST \
        --config "$OUT/teacher.json" --out "$OUT/teacher" --formats safetensors

# 2. The sweep: 6 points of 10 epochs on the default val_split (10% of the training set).
echo '{"method":"kd","epochs":10,"augment":"crop_flip","seed":0}' > "$OUT/sweep-base.json"
echo '{"temperature":[2,4,8],"alpha":[0.1,0.5]}' > "$OUT/sweep-grid.json"
[ -f "$OUT/sweep/sweep.json" ] ||
    .venv/bin/python -m benchmarks.experiments.service_sweep "$OUT/sweep" --data $TRAIN \
        --teacher "$OUT/teacher/student.safetensors" --teacher-arch "$OUT/teacher-arch.json" \
        --student "$OUT/student.json" --config "$OUT/sweep-base.json" --grid "$OUT/sweep-grid.json"
read -r T A < <(.venv/bin/python -c "import json,sys; o=json.load(open(sys.argv[1]))['best_overrides']; print(o['temperature'], o['alpha'])" "$OUT/sweep/sweep.json")
echo "the sweep chose T=$T alpha=$A"

# 3. Three ways, each seed.
TEACHER="--teacher $OUT/teacher/student.safetensors --teacher-arch $OUT/teacher-arch.json"
COMMON="--data $TRAIN --test $TEST --formats safetensors"
for s in $SEEDS; do
    echo "{\"method\":\"scratch\",\"epochs\":10,\"augment\":\"crop_flip\",\"seed\":$s}" > "$OUT/scratch-$s.json"
    echo "{\"method\":\"kd\",\"epochs\":10,\"augment\":\"crop_flip\",\"seed\":$s,\"temperature\":$T,\"alpha\":$A}" > "$OUT/kd-$s.json"
    echo "{\"method\":\"fitnet\",\"hint\":\"auto\",\"epochs\":10,\"augment\":\"crop_flip\",\"seed\":$s,\"temperature\":$T,\"alpha\":$A}" > "$OUT/fitnet-$s.json"
    [ -f "$OUT/scratch-$s/report.json" ] ||
        $K train --arch "$OUT/student.json" $COMMON --config "$OUT/scratch-$s.json" --out "$OUT/scratch-$s"
    for m in kd fitnet; do
        [ -f "$OUT/$m-$s/report.json" ] ||
            $K distill $TEACHER --student "$OUT/student.json" $COMMON --cache-dir "$OUT/cache" \
                --config "$OUT/$m-$s.json" --out "$OUT/$m-$s"
    done
done

# 4. The table.
.venv/bin/python -m benchmarks.experiments.summarize "$OUT" --teacher teacher \
    --rows "scratch=scratch-*" "KD (T $T, alpha $A)=kd-*" "FitNets (hint auto)=fitnet-*"
