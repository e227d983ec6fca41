#!/bin/bash
# What the tokens hold (issue 24): `vitreg probe` on a model pair (without / with 4 registers), one run per
# token kind: the image class (the global task) and the grid cell (the position task) from a random normal
# patch and from the highest-norm patch (the automatic rule's outlier, else the max-norm patch), the class
# from CLS, and from each of the 4 registers of the second model. ONNX Runtime, one thread; the CPU seconds
# of each run (user, system, wall from /usr/bin/time) land in OUT/<kind>.time. Summarise with
# `node docs/study/probe-table.mjs OUT`.
#
#   docs/study/probe-tokens.sh OUT DATA SIZE WEIGHTS_REG0 WEIGHTS_REG4
# DATA: class folders with train/ and val/ (e.g. docs/study/synthetic-probe.mjs --train 500 --val 150).
set -u
out=$1; data=$2; size=$3; w0=$4; w4=$5
mkdir -p "$out"
cli="node --conditions=vitreg-source --import tsx $(dirname "$0")/../../apps/cli/src/main.ts probe"
common=(--data "$data" --size "$size" --engine onnxruntime --threads 1)
run() {
  tag=$1; shift
  /usr/bin/time -f '%U %S %e' -o "$out/$tag.time" $cli "$@" "${common[@]}" --out "$out/$tag" > "$out/$tag.log" 2>&1
  echo "$tag rc=$? cpu=$(tail -1 "$out/$tag.time")"
}
run normal --weights "$w0" --weights "$w4" --task class,position --token normal
run outlier --weights "$w0" --weights "$w4" --task class,position --token outlier
run cls --weights "$w0" --weights "$w4" --task class --token cls
for r in 0 1 2 3; do run "register$r" --weights "$w4" --task class --token register --register "$r"; done
