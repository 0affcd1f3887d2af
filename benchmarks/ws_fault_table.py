"""Tabulate the WebSocket fault probes (../shared/tools/ws_faults.py, run by benchmarks/ws_fault_probes.sh)
before and after a change: one JSON + one Markdown table in benchmarks/results/.

    python -m benchmarks.ws_fault_table BEFORE_DIR AFTER_DIR --out benchmarks/results/ws_faults
        [--note "main 87354fe vs issue-11"]

Each probe contributes the figures that decide whether it passes, plus the reference stream's frames, seq
losses, max gap and p99 lateness over the probe (measured by the probe's own reference client).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def _ref(d: dict) -> dict:
    r = d.get("ref_audio_client") or {}
    return {
        "ref_frames": r.get("frames"),
        "ref_expected": r.get("expected"),
        "ref_seq_missing": r.get("seq_missing"),
        "ref_max_gap_ms": r.get("max_gap_ms"),
        "ref_late_p99_ms": r.get("late_p99_ms"),
    }


def summarise(probe: str, d: dict) -> dict:
    """The deciding figures of one probe's JSON."""
    r = d["result"]
    if probe == "slow_reader":
        out = {
            "slow_client_dropped_after_s": r.get("server_dropped_slow_client_after_s"),
            "rss_mib_before": r.get("rss_mib_before"),
            "rss_mib_max": r.get("rss_mib_max"),
        }
    elif probe == "silent":
        out = {
            "silent_stream_closed_after_s": r.get("silent_stream_closed_after_s"),
            "frozen_audio_closed_after_s": r.get("frozen_audio_stream_closed_after_s"),
            "frozen_frames_dropped_after_s": r.get("frozen_frames_client_dropped_after_s"),
        }
    elif probe == "lockout":
        tl = r.get("timeline_s_clients_newconnect") or []
        refused = [t for t, _, status in tl if status != 101]
        out = {
            "dead_readers": r.get("dead_readers"),
            "new_connects_refused": f"{len(refused)}/{len(tl)}",
            "first_accepted_at_s": next((t for t, _, status in tl if status == 101), None),
            "clients_left_after_live_streams_stop": r.get("clients_after_live_streams_stopped"),
        }
    elif probe == "pipeline":
        w = r.get("ref_in_window") or {}
        out = {
            "sent": r.get("sent"),
            "replies": r.get("replies"),
            "wall_s": r.get("wall_s"),
            "ref_max_gap_ms_in_window": w.get("max_gap_ms"),
            "ref_late_p99_ms_in_window": w.get("late_p99_ms"),
        }
    elif probe == "memory_flood":
        sent = r.get("mib_sent_per_client") or []
        out = {
            "clients": r.get("clients"),
            "mib_accepted_per_client": round(sum(sent) / max(1, len(sent)), 1),
            "rss_mib_before": r.get("rss_mib_before"),
            "rss_mib_max": r.get("rss_mib_max"),
            "streams_gone_after_abort_s": r.get("streams_gone_after_abort_s"),
        }
    elif probe == "trickle_reader":
        out = {
            "received": r.get("received"),
            "seq_gaps": r.get("seq_gaps"),
            "age_ms_p50": round(r["age_ms_p50"], 1) if r.get("age_ms_p50") is not None else None,
            "age_ms_max": round(r["age_ms_max"], 1) if r.get("age_ms_max") is not None else None,
        }
    elif probe == "cross_reset":
        out = {
            "replies": "+".join(m.get("code") or m.get("type") for m in r.get("replies", [])),
            "ref_epoch_changes": (d.get("ref_audio_client") or {}).get("epoch_changes"),
        }
    else:
        out = {}
    return {**out, **_ref(d)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--out", default="benchmarks/results/ws_faults")
    p.add_argument("--note", default="")
    p.add_argument(
        "--extra",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "BEFORE_DIR", "AFTER_DIR"),
        help="one more row from other runs: NAME starts with the probe's name; '-' = no run",
    )
    a = p.parse_args()
    probes = ["slow_reader", "silent", "lockout", "pipeline", "memory_flood", "trickle_reader", "cross_reset"]
    rows: dict[str, dict[str, dict | None]] = {}
    for probe in probes:
        row: dict[str, dict | None] = {}
        for label, folder in (("before", a.before), ("after", a.after)):
            f = Path(folder) / f"{probe}.json"
            log = Path(folder) / f"{probe}.probe.log"
            if f.is_file():
                row[label] = summarise(probe, json.loads(f.read_text()))
            elif log.is_file():  # the probe itself stopped, e.g. because the server closed its connection
                last = (log.read_text().strip().splitlines() or ["(empty log)"])[-1]
                row[label] = {"probe_stopped": last[:160]}
            else:
                row[label] = None
        rows[probe] = row
    for name, before_dir, after_dir in a.extra:
        probe = next(p for p in probes + ["ref_only"] if name.startswith(p))
        row = {}
        for label, folder in (("before", before_dir), ("after", after_dir)):
            f = Path(folder) / f"{probe}.json"
            row[label] = summarise(probe, json.loads(f.read_text())) if folder != "-" and f.is_file() else None
        rows[name] = row
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    meta = {"note": a.note, "cpu": cpu, "cores": os.cpu_count(), "load_at_tabulation": os.getloadavg()}
    Path(a.out + ".json").write_text(json.dumps({"meta": meta, "probes": rows}, indent=1))
    lines = [
        "# WebSocket fault probes, before and after\n",
        f"{a.note}\n",
        f"CPU: {cpu} ({os.cpu_count()} cores, shared with other jobs; load per probe in the run logs).\n",
        "Each probe runs against a fresh `msync stream --input none --no-vmc` (shipped model) beside a "
        "real-time reference stream (`ref_*`: frames received / expected, seq lost, max gap, p99 lateness).\n",
        "| probe | figure | before | after |",
        "|---|---|---|---|",
    ]
    for probe, row in rows.items():
        keys = list((row["after"] or row["before"] or {}).keys())
        for k in keys:
            b = (row["before"] or {}).get(k)
            af = (row["after"] or {}).get(k)
            lines.append(f"| {probe} | {k} | {b} | {af} |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
