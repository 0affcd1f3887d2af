"""Training speed of the real `msync train` run: iterations per second, windows per second and what a run costs,
per device and batch size, measured through the command itself (data sampling, augmentation, non-speech mixing,
generator, discriminators, syncer loss and optimisers all included).

    python -m benchmarks.train_speed --device cpu --threads 1 --batches 8 --steps 30 --out DIR     # this machine
    python -m benchmarks.train_speed --device cuda --batches 8,64,256 --steps 60 --out DIR         # a lent GPU

Each batch size runs `msync train` (as `python -m training.train_generator`, so an uninstalled checkout works)
`--config CONFIG --set batch_size=B --set steps=N ...` in a fresh process (a
failure stops only that row), logging every `--log-every` steps. The trainer logs the cumulative rate since the
start; the steady rate here is the rate between the first log and the last one, so warm-up (cuDNN autotuning,
first allocations) and the final checkpoint are left out; the set-up time (reading clips, statistics, shape
prior, warm start) is reported separately. A "window" is one training sequence of `seq_len` frames (80 frames =
3.2 s of audio with the config's defaults).

Writes ``train_speed.json`` and ``train_speed.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_info, write_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "training" / "configs" / "generator_v03.json"


def steady_rate(records: list[dict], rate_key: str = "it_per_s") -> tuple[float | None, int]:
    """Iterations per second between the first and the last train log, from the trainer's cumulative rates.

    A record logged at step s with cumulative rate r was written s / r seconds after the loop began, so the rate
    between records (s1, r1) and (s2, r2) is (s2 - s1) / (s2 / r2 - s1 / r1). Returns (rate, steps it spans);
    (None, 0) with fewer than two train records.
    """
    rows = [r for r in records if r.get("split") == "train" and r.get(rate_key)]
    if len(rows) < 2:
        return None, 0
    (s1, r1), (s2, r2) = (rows[0]["step"], rows[0][rate_key]), (rows[-1]["step"], rows[-1][rate_key])
    dt = s2 / r2 - s1 / r1
    return ((s2 - s1) / dt if dt > 0 else None), s2 - s1


def run_one(a: argparse.Namespace, batch: int, prefetch: int, work: Path) -> dict:
    out = work / f"run_b{batch}_p{prefetch}"
    cmd = [
        sys.executable, "-m", "training.train_generator", "--config", str(a.config), "--out", str(out),
        "--no-resume", "--no-progress",
        "--set", f"device={a.device}", "--set", f"batch_size={batch}", "--set", f"steps={a.steps}",
        "--set", f"log_every={a.log_every}", "--set", f"eval_every={a.steps}", "--set", f"checkpoint_every={a.steps}",
        "--set", "sample_every=0", "--set", f"threads={a.threads}", "--set", f"prefetch={prefetch}",
    ]  # fmt: skip
    if a.data:
        cmd += ["--set", f"data_dir={a.data}"]
    if a.max_clips:
        cmd += ["--set", f"max_clips={a.max_clips}"]
    t0 = time.perf_counter()
    # its own process group, so that a timeout stops the run and its batch worker together
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        text, _ = proc.communicate(timeout=a.timeout_s)
        rc, tail = proc.returncode, text[-1500:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        rc, tail = 124, f"timed out after {a.timeout_s:g} s (raise --timeout-s); " + (text or "")[-1000:]
    wall = time.perf_counter() - t0
    records = []
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rate, spanned = steady_rate(records)
    train = [r for r in records if r.get("split") == "train"]
    row = {
        "batch": batch,
        "prefetch": prefetch,
        "rc": rc,
        "wall_s": wall,
        "steady_it_per_s": rate,
        "steps_timed": spanned,
    }
    if rate:
        loop_s = a.steps / rate
        row.update(
            windows_per_s=rate * batch,
            setup_s=max(wall - loop_s, 0.0),
            s_per_1000_steps=1000 / rate,
            losses_last={k: v for k, v in train[-1].items() if k.startswith(("loss", "sync", "mouth"))},
        )
    if rc != 0:
        row["error"] = tail
    print(
        f"  B={batch:<5} prefetch {prefetch} rc={rc} "
        + (f"{rate:.2f} it/s, {rate * batch:.0f} windows/s, run {wall:.0f} s" if rate else f"no rate: {tail[-300:]}"),
        flush=True,
    )
    return row


def markdown(report: dict) -> str:
    m, c = report["machine"], report["conditions"]
    lines = [
        "# Training speed of `msync train`",
        "",
        f"Machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs); GPU {report.get('gpu') or 'none'}; "
        f"torch {m.get('torch', '-')}; load {float(m.get('load_avg_1m') or 0):.2f}.  ",
        f"Run: `{c['config']}` on {c['device']} ({c['threads'] or 'default'} torch threads), {c['steps']} steps per "
        f"row, logs every {c['log_every']}; data `{c['data'] or 'config default'}`"
        + (f", first {c['max_clips']} clips per split" if c["max_clips"] else "")
        + ".  ",
        "Steady rate: between the first and last log (warm-up and the final checkpoint left out). Set-up: the "
        "process's wall time minus steps ÷ steady rate (approximate; 0 where a slow warm-up hides it).",
        "",
        "| device | batch | prefetch | it/s | windows/s | s per 1,000 steps | set-up s | rc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if r.get("steady_it_per_s"):
            lines.append(
                f"| {c['device']} | {r['batch']} | {r.get('prefetch', 0)} | {r['steady_it_per_s']:.2f} | {r['windows_per_s']:.0f} | "
                f"{r['s_per_1000_steps']:.0f} | {r['setup_s']:.0f} | {r['rc']} |"
            )
        else:
            lines.append(f"| {c['device']} | {r['batch']} | {r.get('prefetch', 0)} | - | - | - | - | {r['rc']} |")
    errors = [r for r in report["rows"] if r.get("error")]
    if errors:
        lines += ["", "Failures:", ""] + [
            f"- B={r['batch']}, prefetch {r.get('prefetch', 0)}: `{r['error'][-400:]!r}`" for r in errors
        ]
    return "\n".join(lines) + "\n"


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a report field, never a failure
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="msync train config (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--batches", default="8", help="comma list of batch sizes")
    p.add_argument("--prefetch", default="0", help="comma list of `prefetch` values (batches drawn ahead in a worker)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--data", default="", help="data folder (default: the config's data_dir)")
    p.add_argument("--max-clips", type=int, default=0, help="use only the first N clips of each split")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per batch size")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    a = p.parse_args(argv)
    try:
        a.batches = sorted({int(x) for x in a.batches.split(",") if x.strip()})
    except ValueError:
        p.error(f"--batches must be a comma list of positive integers, got {a.batches!r}")
    try:
        a.prefetch = sorted({int(x) for x in a.prefetch.split(",") if x.strip()})
    except ValueError:
        p.error(f"--prefetch must be a comma list of integers >= 0, got {a.prefetch!r}")
    if not a.prefetch or a.prefetch[0] < 0:
        p.error("--prefetch values must be >= 0")
    if not a.batches or a.batches[0] < 1:
        p.error("--batches must be positive")
    if a.steps < 2 * a.log_every:
        p.error("--steps must span at least two logs (steps >= 2 x --log-every)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    print(f"train_speed: {a.device}, batches {a.batches}, prefetch {a.prefetch}, {a.steps} steps each", flush=True)
    with tempfile.TemporaryDirectory(prefix="msync_train_speed_") as td:
        rows = [run_one(a, b, k, Path(td)) for b in a.batches for k in a.prefetch]
    report = {
        "machine": machine_info(),
        "gpu": gpu_name() if a.device.startswith("cuda") else None,
        "conditions": {
            "config": os.path.relpath(a.config, REPO) if Path(a.config).is_absolute() else a.config,
            "device": a.device,
            "threads": a.threads,
            "steps": a.steps,
            "log_every": a.log_every,
            "data": a.data,
            "max_clips": a.max_clips,
        },
        "rows": rows,
    }
    write_report(Path(a.out), "train_speed", report, markdown(report))
    return 0 if any(r.get("steady_it_per_s") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
