#!/usr/bin/env bash
# `make demo`: weightcli's main job on the bundled sample_models/.
set -euo pipefail
cd "$(dirname "$0")/.."
W=".venv/bin/weightcli"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# Bold command lines on a terminal only: a pipe or a log gets plain text.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    step() { printf '\n\033[1m$ weightcli %s\033[0m\n' "$*"; }
else
    step() { printf '\n$ weightcli %s\n' "$*"; }
fi

step inspect sample_models/cnn.keras
$W inspect sample_models/cnn.keras

step inspect sample_models/mlp_nan.h5 --fail-on-nonfinite
$W inspect sample_models/mlp_nan.h5 --fail-on-nonfinite || echo "(exit $?: NaN/Inf found, as planted)"

step inspect sample_models/mlp_export --no-stats
$W inspect sample_models/mlp_export --no-stats

step scale sample_models/mlp_export 2 -s logits -o "$OUT/mlp_export_x2"
$W scale sample_models/mlp_export 2 -s logits -o "$OUT/mlp_export_x2"

step clip sample_models/mlp_nan.h5 --nonfinite zero -o "$OUT/mlp_repaired.h5"
$W clip sample_models/mlp_nan.h5 --nonfinite zero -o "$OUT/mlp_repaired.h5"

step scale sample_models/cnn.keras 0.5 --layer-type Dense -o "$OUT/cnn_scaled.keras"
$W scale sample_models/cnn.keras 0.5 --layer-type Dense -o "$OUT/cnn_scaled.keras"

step quantize sample_models/cnn.keras --bits 8 -o "$OUT/cnn_q8.keras"
$W quantize sample_models/cnn.keras --bits 8 -o "$OUT/cnn_q8.keras"

step apply examples/repair_and_quantize.toml sample_models/mlp_nan.h5 -o "$OUT/mlp_fixed.h5"
$W apply examples/repair_and_quantize.toml sample_models/mlp_nan.h5 -o "$OUT/mlp_fixed.h5"

step inspect "$OUT/mlp_fixed.h5" --fail-on-nonfinite --layers
$W inspect "$OUT/mlp_fixed.h5" --fail-on-nonfinite --layers

step scale sample_models/mlp.keras --by-activation --calibration sample_models/mlp_calibration.npy -o "$OUT/mlp_calibrated.keras"
$W scale sample_models/mlp.keras --by-activation --calibration sample_models/mlp_calibration.npy -o "$OUT/mlp_calibrated.keras"

step diff "$OUT/cnn_q8.keras" sample_models/cnn.keras --atol 0.01
$W diff "$OUT/cnn_q8.keras" sample_models/cnn.keras --atol 0.01

step verify "$OUT/mlp_repaired.h5" --reference sample_models/mlp_keras3.h5 --no-load
$W verify "$OUT/mlp_repaired.h5" --reference sample_models/mlp_keras3.h5 --no-load

step verify "$OUT/mlp_repaired.h5"
$W verify "$OUT/mlp_repaired.h5"

step transplant sample_models/mlp_tfkeras.h5 sample_models/mlp.keras --match-by order --dry-run
$W transplant sample_models/mlp_tfkeras.h5 sample_models/mlp.keras --match-by order --dry-run

step migrate sample_models/mobile_tfkeras.h5 -o "$OUT/mobile_keras3.keras"
$W migrate sample_models/mobile_tfkeras.h5 -o "$OUT/mobile_keras3.keras"

step set sample_models/mlp.keras dense_1/bias=0 -o "$OUT/mlp_zero_bias.keras"
$W set sample_models/mlp.keras dense_1/bias=0 -o "$OUT/mlp_zero_bias.keras"

step merge sample_models/mlp.keras "$OUT/mlp_zero_bias.keras" --method ema --decay 0.5 -o "$OUT/mlp_ema.keras"
$W merge sample_models/mlp.keras "$OUT/mlp_zero_bias.keras" --method ema --decay 0.5 -o "$OUT/mlp_ema.keras"

step freeze sample_models/mlp.keras -s 'dense_*' --note "fine-tune the head only" -o "$OUT/mlp_frozen.keras"
$W freeze sample_models/mlp.keras -s 'dense_*' --note "fine-tune the head only" -o "$OUT/mlp_frozen.keras"
