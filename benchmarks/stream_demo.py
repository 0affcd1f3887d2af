"""End-to-end demo capture of `msync stream`: a screenshot of the live viewer (headless Debian chromium via
Playwright) and the VMC messages received by an independent OSC receiver (python-osc's UDP server).

    python -m benchmarks.stream_demo --out benchmarks/results [--model stream_engine/models/default.onnx]

Starts `msync stream` on its default input (an espeak-ng sentence, real time), default viewer port and default
VMC target 127.0.0.1:39539, captures for a few seconds, then stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", default=None)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--vmc-port", type=int, default=39539)
    p.add_argument("--seconds", type=float, default=6.0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    received: list[tuple[float, str, list]] = []
    lock = threading.Lock()

    def on_message(address, *args):
        with lock:
            received.append((time.monotonic(), address, [a if not isinstance(a, bytes) else repr(a) for a in args]))

    disp = Dispatcher()
    disp.set_default_handler(on_message)
    server = ThreadingOSCUDPServer(("127.0.0.1", a.vmc_port), disp)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    cmd = [
        sys.executable,
        "-m",
        "stream_engine.cli",
        "stream",
        "--duration",
        str(a.seconds + 12),
        "--port",
        str(a.port),
        "--loop",
    ]
    if a.model:
        cmd += ["--model", a.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(5.0)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=os.environ.get("MSYNC_CHROMIUM", "/usr/bin/chromium"),
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            page.goto(f"http://127.0.0.1:{a.port}/")
            page.wait_for_timeout(int(a.seconds * 1000))
            page.screenshot(path=str(out / "viewer.png"))
            browser.close()
    finally:
        proc.terminate()
        try:
            log, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
        server.shutdown()
    (out / "stream_demo.log").write_text(log)
    with lock:
        msgs = list(received)
    addresses: dict[str, int] = {}
    for _, addr, args in msgs:
        key = addr if addr != "/VMC/Ext/Blend/Val" else f"{addr} {args[0]}"
        addresses[key] = addresses.get(key, 0) + 1
    t0 = msgs[0][0] if msgs else 0.0
    sample = [{"t_s": round(t - t0, 3), "address": addr, "args": args} for t, addr, args in msgs[:40]]
    all_float = all(isinstance(x, float) for _, addr, args in msgs for x in args[1:] if addr.startswith("/VMC/Ext/"))
    summary = {"messages": len(msgs), "by_address": addresses, "all_values_float": all_float, "first_messages": sample}
    (out / "vmc_capture.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "first_messages"}, indent=2))
    print(log[-1500:])
    return 0 if msgs else 1


if __name__ == "__main__":
    raise SystemExit(main())
