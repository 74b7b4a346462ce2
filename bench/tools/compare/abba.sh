#!/usr/bin/env bash
# Runs two bench binaries alternately in ABBA order (A B, B A, A B, ...),
# PAIRS pairs, each run writing its results to OUT/a-N or OUT/b-N.
# Usage: abba.sh A_BIN B_BIN PAIRS OUT [bench options, default: --only p1]
# Then: compare.py OUT
#
# Why ABBA: two copies of one binary run alternately measured the second
# of each pair 0.4-1.1 % faster (bench/README.md, 2026-12-04, evening),
# so a plain alternation favours whichever binary runs second.
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n 2,5p "$0" >&2
    exit 2
fi
a=$1 b=$2 pairs=$3 out=$4
shift 4
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--only p1)
mkdir -p "$out"
for i in $(seq 1 "$pairs"); do
    if [ $((i % 2)) -eq 1 ]; then order="a b"; else order="b a"; fi
    for w in $order; do
        if [ "$w" = a ]; then bin=$a; else bin=$b; fi
        "$bin" "${args[@]}" --results "$out/$w-$i" > "$out/$w-$i.log" 2>&1
        echo "pair $i: $w done"
    done
done
