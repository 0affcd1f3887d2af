"""The viewer page in headless Chromium: it connects, decodes binary frames and draws them on its canvas."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from stream_engine.engine import Engine
from stream_engine.outputs.websocket import ServerConfig, WebSocketServer

from fakes import FakeRunner, speechlike

CHROMIUM = os.environ.get("MSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_skip():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install 'msync[test]')")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    return async_playwright


def test_viewer_draws_live_frames_with_head_pose_and_latency():
    async_playwright = _browser_or_skip()

    async def main():
        engine = Engine(FakeRunner(lookahead_frames=2, head_amplitude_deg=15))
        server = WebSocketServer(engine, ServerConfig(port=0, token="tok"))
        await server.start()
        engine.add_sink(server)
        async with engine:
            engine.open_stream("demo")

            async def feed():  # real-time audio, 20 ms chunks
                audio = speechlike(16000 * 30)
                for i in range(0, audio.size, 320):
                    engine.push_audio("demo", audio[i : i + 320])
                    await asyncio.sleep(0.02)

            feeder = engine.spawn(feed())
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
                try:
                    page = await browser.new_page()
                    await page.goto(f"{server.url}?token=tok")
                    await page.wait_for_function("window.msync && window.msync.framesDrawn >= 15", timeout=20000)
                    drawn = await page.evaluate("window.msync.framesDrawn")
                    lit = await page.evaluate("""() => {
                        const c = document.getElementById('face');
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                        return n; }""")
                    texts = {
                        k: await page.text_content(f"#{k}")
                        for k in ("status", "v-stream", "v-engine", "v-algo", "v-head", "frames-drawn")
                    }
                    lost = await page.evaluate("window.msync.lost")
                finally:
                    await browser.close()
            feeder.cancel()
        return drawn, lit, texts, lost

    drawn, lit, texts, lost = asyncio.run(asyncio.wait_for(main(), 60))
    assert drawn >= 15 and int(texts["frames-drawn"]) >= 15
    assert lit > 500  # landmarks and contours were painted
    assert texts["status"] == "connected" and texts["v-stream"] == "demo"
    assert texts["v-engine"].endswith("(ready→sent)") and "ms" in texts["v-engine"]
    assert texts["v-algo"].startswith("120 ms") and texts["v-head"].count("°") == 3
    assert lost == 0
