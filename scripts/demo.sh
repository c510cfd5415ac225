#!/usr/bin/env bash
# `make demo`: weightcli's main job on the bundled sample_models/.
set -euo pipefail
cd "$(dirname "$0")/.."
W=".venv/bin/weightcli"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
step() { printf '\n\033[1m$ weightcli %s\033[0m\n' "$*"; }

step inspect sample_models/cnn.keras
$W inspect sample_models/cnn.keras

step inspect sample_models/mlp_nan.h5 --fail-on-nonfinite
$W inspect sample_models/mlp_nan.h5 --fail-on-nonfinite || echo "(exit $?: NaN/Inf found, as planted)"
