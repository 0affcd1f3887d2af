#!/usr/bin/env bash
# The ../shared/cases of issue 12 before (the /work/main checkout and its venv) and after (this checkout),
# captured by the cases' independent receiver (../shared/cases/tools/msync_capture.py). Writes
# benchmarks/results/cases/*.txt. Usage (from the project root): bash benchmarks/run_cases.sh [MAIN_CHECKOUT]
# Needs build/msync_stream (this checkout) and $MAIN_BUILD/msync_stream (main's C++ CLI) for the C++ case.
set -u
ROOT=$(pwd)
MAIN=${1:-/work/main}
MAIN_BUILD=${MAIN_BUILD:-/tmp/build-main}
C=$ROOT/../shared/cases
R=$ROOT/benchmarks/results/cases
mkdir -p "$R"
{ uptime; grep -m1 "model name" /proc/cpuinfo; } > "$R/conditions.txt"
before() { (cd "$MAIN" && env PATH="$MAIN/.venv/bin:$PATH" VIRTUAL_ENV="$MAIN/.venv" "$@"); }
after() { (cd "$ROOT" && env PATH="$ROOT/.venv/bin:$PATH" VIRTUAL_ENV="$ROOT/.venv" "$@"); }
cap() { python "$C/tools/msync_capture.py" "$@" 2>&1; }

for side in before after; do
  echo "## $side"
  $side bash -c "msync stream --vmc-names vrm1 --print-config | python -c \"import json,sys; print(json.load(sys.stdin)['vmc']['blend_names'])\""
  $side bash -c "$(declare -f cap); C=$C; cap $C/cpp-cli-drops-last-frames/hi.wav --range 9 9 -- --vmc-names vrm1 | tail -1"
done > "$R/vmc-names-flag-ignored.txt"

for side in before after; do
  echo "## $side"
  for f in blink-rate-high/speech_10s.wav silence-landmarks-open/speech_then_6s_silence.wav noise-floor-mouth/speech_pause_fan_noise_-48dBFS.wav; do
    echo "### $f"
    $side bash -c "$(declare -f cap); C=$C; cap $C/$f --range 99 99 | grep -E 'frames received|^blink'"
  done
done > "$R/blink-rate-high.txt"

for side in before after; do
  echo "## $side: file that ends mid-vowel (last rows and the VMC summary)"
  $side bash -c "$(declare -f cap); C=$C; cap $C/audio-stall-mouth-open/speech_cut_mid_vowel.wav --range 1.2 2 | grep -v '^yaw\|^pitch\|^roll'"
  echo "## $side: WebSocket client that goes quiet (repro_ws_stall.py)"
  $side timeout 120 python "$C/audio-stall-mouth-open/repro_ws_stall.py" 2>&1 | tail -12
done > "$R/audio-stall-mouth-open.txt"
echo "written to $R"
