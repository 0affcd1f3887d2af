"""Two Ray nodes on this host, one `msync serve` replica on each: do the streams spread across both nodes?

Each node offers one CPU and each replica asks for one, so Ray places one replica per node; one HTTP proxy runs
on the head node. 16 streams connect one after another and stream 3 s of audio in real time; each `ready` names
the replica and node that holds the stream. Run once with the proxy's local-node preference off (what
`msync serve` sets) and once with Ray's default (on), each in its own cluster:

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && exec python -m benchmarks.serve_two_nodes'

Writes benchmarks/results/serve_two_nodes.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def one_cluster(prefer_local: bool, streams: int, seconds: float) -> dict:
    """Child process body: a 2-node cluster, the app, the streams; returns where they went."""
    import numpy as np
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from benchmarks.serve_capacity import make_audio
    from stream_engine.serve.app import PROXY_HOOK_ENV, build_app
    from stream_engine.serve.client import stream_audio
    from stream_engine.serve.config import ServeConfig

    flag = "1" if prefer_local else "0"
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = flag
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_AZ_ROUTING"] = flag
    os.environ.update(PROXY_HOOK_ENV)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        serve.start(http_options={"host": "127.0.0.1", "port": 8000, "location": "HeadOnly"})
        cfg = ServeConfig(precision="fp32", replicas=2, streams_per_replica=streams, cpus_per_replica=1.0, seed=1)
        serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=False)
        time.sleep(2.0)

        async def run():
            async def one(i):
                await asyncio.sleep(0.15 * i)
                return await stream_audio(
                    "ws://127.0.0.1:8000/audio", f"n-{i}", make_audio(i, seconds), realtime=True, open_timeout_s=60
                )

            return await asyncio.gather(*(one(i) for i in range(streams)))

        results = asyncio.run(run())
        head = ray.get_runtime_context().get_node_id()
        per_node = collections.Counter("head" if r.ready.get("node") == head else "worker" for r in results)
        replica_nodes = {r.ready.get("replica"): ("head" if r.ready.get("node") == head else "worker") for r in results}
        late = np.concatenate([r.lateness_ms for r in results])
        return {
            "prefer_local_node": prefer_local,
            "nodes": len(nodes),
            "streams": streams,
            "streams_per_node": dict(per_node),
            "replica_nodes": replica_nodes,
            "complete": all(r.close_code == 1000 and len(r.indices) == int(np.ceil(seconds * 25)) for r in results),
            "lateness_p50_ms": float(np.percentile(late, 50)),
            "lateness_p99_ms": float(np.percentile(late, 99)),
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", default=str(RESULTS / "serve_two_nodes"))
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_cluster(args.child == "on", args.streams, args.seconds)), flush=True)
        return 0
    rows = []
    for mode in ("off", "on"):  # each in its own process: Ray's proxy reads the setting when it starts
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.serve_two_nodes",
            "--child",
            mode,
            "--streams",
            str(args.streams),
            "--seconds",
            str(args.seconds),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[len("RESULT ") :]))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), "")
    outp = Path(args.out)
    outp.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "load": load, "rows": rows}, indent=1))
    lines = [
        f"# msync serve on two Ray nodes (one host, private network namespace; {cpu}, load {load[0]:.2f})",
        "",
        "One replica per node (1 CPU each), one proxy on the head node, streams connecting one after another.",
        "",
        "| proxy prefers its own node | streams | on head node | on worker node | all frames | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["streams_per_node"]
        lines.append(
            f"| {'yes (Ray default)' if r['prefer_local_node'] else 'no (msync serve)'} | {r['streams']} | "
            f"{s.get('head', 0)} | {s.get('worker', 0)} | {'yes' if r['complete'] else 'no'} | "
            f"{r['lateness_p50_ms']:.1f} | {r['lateness_p99_ms']:.1f} |"
        )
    outp.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
