#!/usr/bin/env bash
# MNIST with the config's defaults, through the CLI: does KD with only "method" given close
# at least half of the gap between the student trained alone and its teacher (issue 10)?
# Hinton et al.'s nets: a 2×1200 teacher (dropout 0.2), a 2×800 student; the split of the
# 10,000 MNIST test images of benchmarks/experiments/mnist.py (8,000 to train on, of which
# the default val_split holds out 10% to choose the exported epoch; 2,000 to test on).
#
# Usage (from the repository root): benchmarks/experiments/mnist_defaults.sh OUT [SEEDS...]
# EXTRA='"weight_decay": 0' adds fields to the students' configs (for investigations).
set -euo pipefail
OUT=${1:?usage: $0 OUT [SEEDS...]}
shift
SEEDS=${*:-0 1 2}
K=.venv/bin/kdserve
mkdir -p "$OUT"
.venv/bin/python -m benchmarks.experiments.mnist --write-npz "$OUT/data"
D="--data $OUT/data/mnist-train.npz --test $OUT/data/mnist-test.npz --formats safetensors"
echo '{"family":"mlp","hidden":[1200,1200],"dropout":0.2}' > "$OUT/teacher.json"
echo '{"family":"mlp","hidden":[800,800]}' > "$OUT/student.json"
# The teacher as Hinton et al. trained theirs: dropout (in its spec) and jittered inputs (a
# random crop of the image padded by 2 pixels, i.e. shifts of up to 2 pixels), 60 epochs.
echo '{"method":"scratch","epochs":60,"augment":"crop","crop_padding":2}' > "$OUT/teacher-config.json"
[ -f "$OUT/teacher/report.json" ] ||
    $K train --arch "$OUT/teacher.json" $D --config "$OUT/teacher-config.json" --out "$OUT/teacher"
for s in $SEEDS; do
    for m in scratch kd; do
        echo "{\"method\":\"$m\",\"seed\":$s${EXTRA:+,$EXTRA}}" > "$OUT/$m-$s.json"
        [ -f "$OUT/$m-$s/report.json" ] && continue
        if [ $m = scratch ]; then
            $K train --arch "$OUT/student.json" $D --config "$OUT/$m-$s.json" --out "$OUT/$m-$s"
        else
            $K distill --teacher "$OUT/teacher/student.safetensors" \
                --teacher-arch "$OUT/teacher.json" --student "$OUT/student.json" $D \
                --config "$OUT/$m-$s.json" --out "$OUT/$m-$s"
        fi
    done
done
.venv/bin/python -m benchmarks.experiments.summarize "$OUT" --teacher teacher \
    --rows "scratch=scratch-*" "kd=kd-*"
