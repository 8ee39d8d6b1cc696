#!/usr/bin/env bash
# GradMAP on IEEE-123 with 1,000 agents, measured fairly (docs/gradmap.md#benchmark):
#   1. gridedge tune: every learner gets the same tuning budget on validation days (6 configurations, the
#      defaults first, 1 seed, 5 minutes each, JOBS at a time);
#   2. gridedge compare --preset paper --tuned: seeds 0-4 x 15 minutes for gradmap, gradma, ssl, ssl-penalty,
#      ippo and mappo with the chosen settings, evaluated every 30 s of training on the same validation days,
#      scored once on the test days, with GradMAP's speed-up over GradMA and over SSL;
#   3. gridedge profile: where one GradMAP iteration spends its time.
# Writes OUT/tune/tune.md, OUT/compare/results.md (the table docs/gradmap.md shows, with date, machine, torch
# version and commit) and OUT/profile_*.json. Reruns continue where they stopped.
#
# Usage: benchmarks/gradmap_ieee123.sh [--smoke]     (env: OUT=DIR, JOBS=2, GRIDEDGE="python -m gridedge_run.cli")
#   --smoke (or SMOKE=1): the same pipeline on the smoke task in a few minutes; its numbers mean nothing.
# The full run takes about 7 hours on 2 CPU cores (docs/gradmap.md#benchmark).
set -euo pipefail

SMOKE=${SMOKE:-0}
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; elif [[ -n "${1:-}" ]]; then
    echo "usage: $0 [--smoke]" >&2
    exit 2
fi
read -r -a GRIDEDGE <<< "${GRIDEDGE:-python -m gridedge_run.cli}"
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1  # one torch thread per run: the budgets are per core
LEARNERS=(gradmap gradma ssl ssl-penalty ippo mappo)
if [[ "$SMOKE" == 1 ]]; then
    OUT=${OUT:-runs/gradmap_ieee123_smoke}
    PRESET=smoke
    TUNE=(--configs 2 --seeds 100 --minutes 0.05)
    COMPARE=(--seeds 0)
    PROFILE=(--feeder ieee13 --agents 20 --set batch_days=2 --iterations 1)
else
    OUT=${OUT:-runs/gradmap_ieee123}
    PRESET=paper
    TUNE=(--configs 6 --seeds 100 --minutes 5)
    COMPARE=(--seeds 0-4)
    PROFILE=(--feeder ieee123 --agents 1000 --iterations 3)
fi
mkdir -p "$OUT"

"${GRIDEDGE[@]}" tune --preset "$PRESET" --methods "${LEARNERS[@]}" "${TUNE[@]}" --jobs "$JOBS" --out "$OUT/tune" --quiet \
    > "$OUT/tune.txt"
"${GRIDEDGE[@]}" compare --preset "$PRESET" "${COMPARE[@]}" --jobs "$JOBS" --tuned "$OUT/tune" \
    --methods "${LEARNERS[@]}" noop price-seeking droop oracle --out "$OUT/compare" --quiet > "$OUT/compare.txt"
for method in gradmap gradma; do
    "${GRIDEDGE[@]}" profile --method "$method" "${PROFILE[@]}" --json > "$OUT/profile_$method.json"
done
cat "$OUT/tune/tune.md" "$OUT/compare/results.md"
