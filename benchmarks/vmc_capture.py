"""Capture what `msync stream` sends over VMC with an independent python-osc receiver, and check it on the wire.

    python -m benchmarks.vmc_capture FILE... [--names arkit] [--out benchmarks/results] [--name vmc_capture_arkit]

For each file: runs `msync stream --input FILE --fast --quiet --port 0 --seed 7 --vmc-names NAMES` with VMC and
raw-landmark OSC pointed at two python-osc `ThreadingOSCUDPServer`s of this process (python-osc's own parser and
dispatcher; nothing of msync's is used to read the wire), waits for it to exit, and reports: VMC frames (one
per /VMC/Ext/Blend/Apply), the blendshape names and argument types, the last values the avatar was left with,
and on speech frames the Pearson r of the VMC mouth (jawOpen for arkit; the sum of the viseme shapes
otherwise) with the inner-lip gap / inter-ocular distance of the landmarks sent over OSC for the same frame
(matched by /VMC/Ext/T = the frame's stream time). Writes NAME.json (every VMC frame of the first file) and
NAME.md. Runs whichever `msync` is on PATH, so it also measures other checkouts.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

VISEME_KEYS = {"A", "I", "U", "E", "O", "aa", "ih", "ou", "ee", "oh"}


class Receiver:
    """A python-osc UDP server on 127.0.0.1 collecting messages (address, args) in arrival order."""

    def __init__(self) -> None:
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import ThreadingOSCUDPServer

        self.messages: list[tuple[str, tuple]] = []
        disp = Dispatcher()
        disp.set_default_handler(lambda address, *args: self.messages.append((address, args)))
        self.server = ThreadingOSCUDPServer(("127.0.0.1", 0), disp)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vmc_frames(messages: list[tuple[str, tuple]]) -> list[dict]:
    """Group VMC messages into frames: {"t": /VMC/Ext/T, "values": {name: value}, "types": {name: type}}."""
    frames, t, values, types = [], None, {}, {}
    for address, args in messages:
        if address == "/VMC/Ext/T":
            t = float(args[0])
        elif address == "/VMC/Ext/Blend/Val":
            values[args[0]] = args[1]
            types[args[0]] = type(args[1]).__name__
        elif address == "/VMC/Ext/Blend/Apply":
            frames.append({"t": t, "values": dict(values), "types": dict(types)})
            values, types = {}, {}
    return frames


def lip_gaps(messages: list[tuple[str, tuple]]) -> dict[float, tuple[float, bool]]:
    """pts_s -> (inner-lip gap / inter-ocular distance, silent) from the raw-landmark OSC messages."""
    out, last_pts = {}, None
    for address, args in messages:
        if address.endswith("/frame"):
            xy = np.asarray(args[3:], dtype=np.float64).reshape(-1, 2)
            iod = float(np.linalg.norm(xy[36] - xy[45]))
            gap = float(np.mean([np.linalg.norm(xy[a] - xy[b]) for a, b in ((61, 67), (62, 66), (63, 65))])) / iod
            last_pts = round(float(args[2]), 3)
            out[last_pts] = (gap, False)
        elif address.endswith("/signals") and last_pts is not None:
            out[last_pts] = (out[last_pts][0], bool(args[-1] > 0.5))
    return out


def capture(path: str, names: str, extra: list[str]) -> dict:
    vmc, osc = Receiver(), Receiver()
    cmd = [
        "msync",
        "stream",
        "--input",
        path,
        "--fast",
        "--quiet",
        "--port",
        "0",
        "--seed",
        "7",
        "--vmc",
        f"127.0.0.1:{vmc.port}",
        "--osc",
        f"127.0.0.1:{osc.port}",
        *extra,
    ]
    if names:
        cmd += ["--vmc-names", names]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    time.sleep(0.3)
    vmc.close()
    osc.close()
    frames = vmc_frames(vmc.messages)
    gaps = lip_gaps(osc.messages)
    mouth, gap = [], []
    for f in frames:
        key = None if f["t"] is None else round(f["t"], 3)
        if key in gaps and not gaps[key][1]:
            v = f["values"]
            mouth.append(
                float(v["jawOpen"]) if "jawOpen" in v else sum(float(x) for k, x in v.items() if k in VISEME_KEYS)
            )
            gap.append(gaps[key][0])
    r = float(np.corrcoef(mouth, gap)[0, 1]) if len(mouth) > 2 and np.std(mouth) > 0 else float("nan")
    names_seen = sorted({n for f in frames for n in f["values"]})
    types_seen = sorted({t for f in frames for t in f["types"].values()})
    return {
        "file": path,
        "command": " ".join(cmd),
        "exit": proc.returncode,
        "stderr_tail": proc.stderr[-300:],
        "vmc_frames": len(frames),
        "osc_frames": len(gaps),
        "names": names_seen,
        "arg_types": types_seen,
        "speech_frames_matched": len(mouth),
        "r_vmc_mouth_vs_lip_gap": r,
        "last_frame": frames[-1] if frames else None,
        "frames": frames,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--names", default="arkit", help="--vmc-names value ('' = the default)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="vmc_capture_arkit")
    p.add_argument("--msync-args", default="", help="more msync stream arguments, one string")
    a = p.parse_args(argv)
    results = [capture(f, a.names, shlex.split(a.msync_args)) for f in a.files]
    lines = [
        f"# VMC capture ({a.name}): `--vmc-names {a.names or '(default)'}`, independent python-osc receiver",
        "",
        "| file | exit | VMC frames | OSC frames | names | arg types | r(VMC mouth, lip gap) on speech | "
        "last frame: max value |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        last = res["last_frame"]["values"] if res["last_frame"] else {}
        lines.append(
            f"| {Path(res['file']).name} | {res['exit']} | {res['vmc_frames']} | {res['osc_frames']} | "
            f"{len(res['names'])} | {','.join(res['arg_types'])} | {res['r_vmc_mouth_vs_lip_gap']:.3f} "
            f"(n={res['speech_frames_matched']}) | {max(last.values(), default=float('nan')):.3f} |"
        )
    lines += [
        "",
        "Names seen: " + ", ".join(results[0]["names"]),
        "",
        "The VMC mouth is jawOpen with arkit names, the sum of the viseme shapes otherwise; 'last frame' is "
        "what the avatar is left with after msync exits (0 = the rest pose).",
        "",
        f"Command: `{results[0]['command']}` (ports vary).",
    ]
    from benchmarks.common import machine_info, write_report

    summary = [{k: v for k, v in r.items() if k != "frames"} for r in results]
    write_report(
        a.out,
        a.name,
        {"captures": summary, "frames_of_first_file": results[0]["frames"], "machine": machine_info()},
        "\n".join(lines) + "\n",
    )
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
