#!/usr/bin/env bash
# ../shared/tools/ws_faults.py vmc_listen against `msync stream --input none` of a checkout (its .venv).
# usage: bash benchmarks/run_vmc_listen.sh CHECKOUT OUT.json   (before: /work/main, after: this checkout)
set -u
CO=$1; OUT=$2
read P U < <(python3 -c "
import socket
a=socket.socket(); a.bind(('127.0.0.1',0)); b=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(('127.0.0.1',0))
print(a.getsockname()[1], b.getsockname()[1])")
cd $CO
env PATH=$CO/.venv/bin:$PATH msync stream --input none --port $P --vmc 127.0.0.1:$U --quiet --seed 7 > /tmp/vl_server.log 2>&1 &
PID=$!
sleep 4
env PATH=$CO/.venv/bin:$PATH python /work/shared/tools/ws_faults.py vmc_listen --port $P --udp-port $U --pid $PID --secs 12 --wav /work/shared/tools/speech16k.wav --out $OUT > /tmp/vl_probe.log 2>&1
kill $PID; wait $PID 2>/dev/null
python3 -c "import json; d=json.load(open('$OUT')); print(json.dumps(d['result']))"
