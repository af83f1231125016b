#!/usr/bin/env bash
# Side-by-side: Voxline and Pipecat on the workloads of bench/SPEC.md, on this machine, in one run.
#
#   bash benches/compare.sh [w1 w2 w3 w4 w5]        (default: all five)
#
# Env: RUNS (default 3) repetitions, interleaved (pipecat, voxline, pipecat, voxline, ...);
#      BENCH_DIR (default ../shared/bench) holds SPEC.md, audio/ and pipecat/;
#      PIPECAT_VENV (default target/pipecat-venv) is created with the pinned requirements if missing;
#      OUT (default target/bench-compare) receives the JSON lines, the table and the plot.
# Every measured process is pinned to core 0 (W4/W5 parents spawn pinned children themselves).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BENCH_DIR="$(cd "${BENCH_DIR:-$ROOT/../shared/bench}" && pwd)"
RUNS="${RUNS:-3}"
VENV="${PIPECAT_VENV:-$ROOT/target/pipecat-venv}"
OUT="${OUT:-$ROOT/target/bench-compare}"
mkdir -p "$OUT"
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(w1 w2 w3 w4 w5)

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating the Pipecat virtualenv in $VENV (one time)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$BENCH_DIR/pipecat/requirements.txt"
fi
cargo build --release --example bench >&2
VOX="$ROOT/target/release/examples/bench"
AUDIO="$BENCH_DIR/audio/call_8k.ulaw"

declare -A SCRIPT=([w1]=w1_per_frame [w2]=w2_front_end [w3]=w3_interruption [w4]=w4_concurrency [w5]=w5_memory)
for w in "${WORKLOADS[@]}"; do : > "$OUT/pipecat-$w.jsonl"; : > "$OUT/voxline-$w.jsonl"; done
for r in $(seq 1 "$RUNS"); do
  for w in "${WORKLOADS[@]}"; do
    echo "run $r/$RUNS $w: pipecat" >&2
    pin=(taskset -c 0); [ "$w" = w4 ] || [ "$w" = w5 ] && pin=()
    (cd "$BENCH_DIR/.." && "${pin[@]}" "$VENV/bin/python" "bench/pipecat/${SCRIPT[$w]}.py" 2>>"$OUT/pipecat-$w.log") >> "$OUT/pipecat-$w.jsonl"
    echo "run $r/$RUNS $w: voxline" >&2
    args=(); [ "$w" = w2 ] || [ "$w" = w4 ] && args=(--audio "$AUDIO")
    "${pin[@]}" "$VOX" "$w" "${args[@]}" 2>>"$OUT/voxline-$w.log" >> "$OUT/voxline-$w.jsonl"
  done
done
python3 "$ROOT/benches/compare.py" "$OUT" "$BENCH_DIR" "${WORKLOADS[@]}" | tee "$OUT/table.md"
echo "plot: $OUT/per_hop.svg" >&2
