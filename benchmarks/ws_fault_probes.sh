#!/usr/bin/env bash
# Run the shared WebSocket fault probes (../shared/tools/ws_faults.py) against a fresh `msync stream --input none`
# per probe, on a loopback port; one JSON per probe in OUTDIR. Usage:
#   bash benchmarks/ws_fault_probes.sh MSYNC_BIN PYTHON OUTDIR PORT [PROBE...]
# MSYNC_BIN/PYTHON: the msync entry point and the python of the venv under test (e.g. /work/main/.venv/bin/...).
# MSYNC_ARGS (environment): extra flags for the server, e.g. "--config server.json"; PROBE_ARGS: replace the
# probe's default arguments.
set -u
MSYNC=$1; PY=$2; OUT=$3; PORT=$4; shift 4
TOOLS=$(cd "$(dirname "$0")/../../shared/tools" 2>/dev/null && pwd || echo ../shared/tools)
PROBES=${*:-slow_reader silent lockout pipeline memory_flood trickle_reader cross_reset}
mkdir -p "$OUT"
for probe in $PROBES; do
  case $probe in
    slow_reader) args="--secs 30";;
    silent) args="--secs 45";;
    lockout) args="--n 26 --secs 45";;
    pipeline) args="--n 20000";;
    memory_flood) args="--n 8 --secs 15";;
    trickle_reader) args="--secs 20";;
    cross_reset) args="";;
    ref_only) args="--secs 10";;
    *) args="";;
  esac
  case ${PROBE_ARGS:-} in
    "") ;;
    *) args=$PROBE_ARGS;;
  esac
  "$MSYNC" stream --input none --port "$PORT" --no-vmc --quiet ${MSYNC_ARGS:-} > "$OUT/$probe.server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do "$PY" - "$PORT" <<'PYEOF' && break
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1)
except Exception:
    sys.exit(1)
PYEOF
    sleep 0.2; done
  echo "== $probe (server pid $pid) $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout 300 "$PY" "$TOOLS/ws_faults.py" "$probe" --host 127.0.0.1 --port "$PORT" --pid "$pid" \
      --wav "$TOOLS/speech16k.wav" $args --out "$OUT/$probe.json" > /dev/null 2> "$OUT/$probe.probe.log"
  echo "   rc=$? $(date +%T)"
  kill "$pid"; wait "$pid" 2>/dev/null
done
