#!/usr/bin/env bash
# Side-by-side: Voxline and Pipecat on the workloads of bench/SPEC.md, on this machine, in one run.
#
#   bash benches/compare.sh [w1 w2 w3 w4 w5 w6]     (default: w1..w5; w6 only when asked)
#
# w6 (turn taking, benches/w6/README.md) generates its corpus once into target/w6-corpus
# (benches/w6/make_corpus.py: espeak-ng + sox) and scores both engines with benches/w6/score.py.
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
features=()
if [[ " ${WORKLOADS[*]} " == *" w6 "* ]]; then
  # W6 runs the smart-turn model: the feature, and the model file (sha256-pinned, from PyPI).
  features=(--features smart-turn)
  bash "$ROOT/scripts/fetch-smart-turn.sh" >&2
fi
cargo build --release --example bench "${features[@]}" >&2
VOX="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench"
AUDIO="$BENCH_DIR/audio/call_8k.ulaw"

declare -A SCRIPT=([w1]=w1_per_frame [w2]=w2_front_end [w3]=w3_interruption [w4]=w4_concurrency [w5]=w5_memory)
W6_CORPUS="$ROOT/target/w6-corpus"
for w in "${WORKLOADS[@]}"; do
  # make_corpus.py returns at once when the corpus (same generator version and seed) is there
  if [ "$w" = w6 ]; then python3 "$ROOT/benches/w6/make_corpus.py" "$W6_CORPUS" >&2; fi
done
for w in "${WORKLOADS[@]}"; do : > "$OUT/pipecat-$w.jsonl"; : > "$OUT/voxline-$w.jsonl"; done
for r in $(seq 1 "$RUNS"); do
  for w in "${WORKLOADS[@]}"; do
    if [ "$w" = w6 ]; then
      echo "run $r/$RUNS w6: pipecat" >&2
      taskset -c 0 "$VENV/bin/python" "$ROOT/benches/w6/pipecat_w6.py" "$W6_CORPUS" 2>>"$OUT/pipecat-w6.log" >> "$OUT/pipecat-w6.jsonl"
      echo "run $r/$RUNS w6: voxline" >&2
      taskset -c 0 "$VOX" w6 --corpus "$W6_CORPUS" --speculate 2>>"$OUT/voxline-w6.log" >> "$OUT/voxline-w6.jsonl"
      continue
    fi
    echo "run $r/$RUNS $w: pipecat" >&2
    pin=(taskset -c 0); [ "$w" = w4 ] || [ "$w" = w5 ] && pin=()
    (cd "$BENCH_DIR/.." && "${pin[@]}" "$VENV/bin/python" "bench/pipecat/${SCRIPT[$w]}.py" 2>>"$OUT/pipecat-$w.log") >> "$OUT/pipecat-$w.jsonl"
    echo "run $r/$RUNS $w: voxline" >&2
    args=(); [ "$w" = w2 ] || [ "$w" = w4 ] && args=(--audio "$AUDIO")
    "${pin[@]}" "$VOX" "$w" "${args[@]}" 2>>"$OUT/voxline-$w.log" >> "$OUT/voxline-$w.jsonl"
  done
done
W6_CORPUS="$W6_CORPUS" python3 "$ROOT/benches/compare.py" "$OUT" "$BENCH_DIR" "${WORKLOADS[@]}" | tee "$OUT/table.md"
echo "plot: $OUT/per_hop.svg" >&2
