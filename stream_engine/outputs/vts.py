"""VTube Studio output: a plugin of VTube Studio's public API (WebSocket, default ws://127.0.0.1:8001).

The session (messages as documented in DenchiSoft/VTubeStudio's README, "API Details"; every message is
``{"apiName": "VTubeStudioPublicAPI", "apiVersion": "1.0", "requestID": ..., "messageType": ..., "data": ...}``):

1. ``APIStateRequest`` -> ``APIStateResponse`` (``active``, ``vTubeStudioVersion``, ``currentSessionAuthenticated``).
2. With a stored token: ``AuthenticationRequest`` (``pluginName``, ``pluginDeveloper``, ``authenticationToken``)
   -> ``AuthenticationResponse`` (``authenticated``, ``reason``). Without one, or when it is refused:
   ``AuthenticationTokenRequest`` (``pluginName``, ``pluginDeveloper``): VTube Studio asks the user to allow the
   plugin and answers ``AuthenticationTokenResponse`` (``authenticationToken``), or ``APIError`` 50 when the user
   denies it. The token is stored in `VtsConfig.token_file` (mode 0600) and reused on every later connection.
3. ``InjectParameterDataRequest`` (``faceFound``, ``mode`` "set", ``parameterValues`` [{``id``, ``value``}]) at
   `rate_hz` (25 Hz): MouthOpen (the mouth openness, = the sum of the visemes), MouthSmile (mean of ARKit
   mouthSmileLeft/Right), FaceAngleX/Y/Z (yaw, pitch, roll in degrees, clamped to +-30), EyeOpenLeft/Right
   (1 - blink). VTube Studio keeps control of a parameter only while it is re-sent at least once a second, so
   the latest values are re-sent at the rate even when no frame arrives. Answers (``InjectParameterDataResponse``
   or ``APIError``) are read and counted; they never hold up the sending.

The engine side (`send_frames`, `stream_event`) only stores the newest values: a slow, absent or refusing VTube
Studio never blocks the engine. A lost connection is retried with exponential backoff (`reconnect_min_s`
doubling up to `reconnect_max_s`). A denied token request stops the output with a logged explanation (asking
again at once would pester the user). One stream drives the model (`vmc.DriverChoice`); on its reset, stall or
close, and when the output closes, the rest pose is sent. Every session step is written to `log_file` (JSON
lines) when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch
from stream_engine.outputs.vmc import DriverChoice
from stream_engine.signals import NEUTRAL_SIGNALS, Signals

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)

API_NAME = "VTubeStudioPublicAPI"
API_VERSION = "1.0"
DEFAULT_URL = "ws://127.0.0.1:8001"
#: ErrorID values of the public API used here (DenchiSoft/VTubeStudio Files/ErrorID.cs).
ERROR_REQUIRES_AUTHENTICATION = 8
ERROR_TOKEN_REQUEST_DENIED = 50
PARAMETERS = ("MouthOpen", "MouthSmile", "FaceAngleX", "FaceAngleY", "FaceAngleZ", "EyeOpenLeft", "EyeOpenRight")


def default_token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "msync" / "vts_token.json"


@dataclasses.dataclass(frozen=True)
class VtsConfig:
    """VTube Studio plugin output.

    Attributes:
        enabled: connect at all.
        url: VTube Studio's API server (Settings -> "Start API", default port 8001).
        plugin_name, plugin_developer: shown to the user when the token is requested (3-32 characters).
        token_file: where the token is stored ("" = $XDG_CONFIG_HOME/msync/vts_token.json).
        rate_hz: InjectParameterDataRequest rate.
        stream: the stream that drives the model ("" = the local input's, else the first with a frame).
        face_found: tell VTube Studio a face is tracked (so its own idle animation does not take over).
        reconnect_min_s, reconnect_max_s: backoff between connection attempts.
        token_timeout_s: how long to wait for the user to allow the plugin.
        log_file: JSON-lines session log ("" = none).
    """

    enabled: bool = False
    url: str = DEFAULT_URL
    plugin_name: str = "msync"
    plugin_developer: str = "msync developers"
    token_file: str = ""
    rate_hz: float = 25.0
    stream: str = ""
    face_found: bool = True
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    token_timeout_s: float = 300.0
    log_file: str = ""

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"VTube Studio url must start with ws:// or wss://, got {self.url!r}")
        if not 3 <= len(self.plugin_name) <= 32 or not 3 <= len(self.plugin_developer) <= 32:
            raise ValueError("plugin_name and plugin_developer must be 3-32 characters (VTube Studio's rule)")
        if not 0 < self.rate_hz <= 100:
            raise ValueError("rate_hz must be in (0, 100]")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")


def parameter_values(signals: Signals) -> list[dict[str, Any]]:
    """The InjectParameterDataRequest values for one frame's signals (see the module docstring)."""
    smile = 0.5 * (signals.blendshape("mouthSmileLeft") + signals.blendshape("mouthSmileRight"))

    def angle(v: float) -> float:
        return round(max(-30.0, min(30.0, float(v))), 3)

    values = {
        "MouthOpen": float(signals.mouth_open),
        "MouthSmile": smile,
        "FaceAngleX": angle(signals.head.yaw_deg),
        "FaceAngleY": angle(signals.head.pitch_deg),
        "FaceAngleZ": angle(signals.head.roll_deg),
        "EyeOpenLeft": 1.0 - float(signals.blink),
        "EyeOpenRight": 1.0 - float(signals.blink),
    }
    return [{"id": k, "value": round(float(values[k]), 4)} for k in PARAMETERS]


class TokenStore:
    """The plugin's authentication token in a JSON file readable by its owner only (0600)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, url: str) -> str | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        token = data.get("tokens", {}).get(url) if isinstance(data, dict) else None
        return token if isinstance(token, str) and token else None

    def save(self, url: str, token: str) -> None:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data.setdefault("tokens", {})[url] = token
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def forget(self, url: str) -> None:
        token = self.load(url)
        if token is not None:
            self.save(url, "")


class VtsError(RuntimeError):
    """An APIError answer or an unexpected message from VTube Studio."""

    def __init__(self, message: str, error_id: int | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id


class VtsSink:
    """`FrameSink` that drives a VTube Studio model as a plugin (module docstring).

    Args:
        cfg: `VtsConfig`.
        local_stream: the local input's stream id, preferred as the driver unless `cfg.stream` is set.
    Attributes:
        state: "idle", "connecting", "authenticating", "waiting_for_user", "streaming", "denied" or "closed".
        stats: counters (connects, sent, answers, errors, reconnects).
    """

    def __init__(self, cfg: VtsConfig, local_stream: str | None = None) -> None:
        self.cfg = cfg
        self.choice = DriverChoice(cfg.stream, local_stream)
        self.tokens = TokenStore(cfg.token_file or default_token_file())
        self.state = "idle"
        self.stats = {"connects": 0, "sent": 0, "answers": 0, "errors": 0, "reconnects": 0, "frames": 0}
        self._values = parameter_values(NEUTRAL_SIGNALS)
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._log_file = open(cfg.log_file, "a") if cfg.log_file else None  # noqa: SIM115 (closed in aclose)
        self._ws: ClientConnection | None = None
        self._closing = False

    # ------------------------------------------------------------------ FrameSink (never blocks)
    def start(self) -> None:
        """Start the connection task on the running loop (idempotent; `send_frames` calls it too)."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="msync-vts")

    def send_frames(self, frames: Sequence[LandmarkFrame]) -> None:
        for frame in frames:
            if frame.signals is not None and self.choice.drives(frame.stream_id):
                # stalled frames (silence the engine added) are followed like any other: they bring the face to rest
                self._values = parameter_values(frame.signals)
                self.stats["frames"] += 1
        with contextlib.suppress(RuntimeError):  # no running loop (synchronous tests): nothing to start
            self.start()

    def send_batch(self, batch: FrameBatch) -> None:
        """`send_frames` for a published step (the batch sink contract): the driving stream's newest row's
        values, every driving row counted."""
        rows = self.choice.rows(batch)
        if rows:
            signals = batch.frame(rows[-1]).signals
            assert signals is not None  # `DriverChoice.rows` is empty for a batch without signals
            self._values = parameter_values(signals)
            self.stats["frames"] += len(rows)
        with contextlib.suppress(RuntimeError):  # no running loop (synchronous tests): nothing to start
            self.start()

    def stream_event(self, event: dict[str, Any]) -> None:
        if self.choice.on_event(event):
            self._values = parameter_values(NEUTRAL_SIGNALS)

    async def aclose(self) -> None:
        """Send the rest pose once (if streaming), then close the connection and stop."""
        self._values = parameter_values(NEUTRAL_SIGNALS)
        if self.state == "streaming":  # let the sending loop carry the rest pose once before it stops
            sent = self.stats["sent"]
            deadline = time.monotonic() + 0.5
            while self.stats["sent"] <= sent and self.state == "streaming" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self.stats["sent"] > sent:
                self._event("rest_pose_sent")
        self._closing = True
        if self._ws is not None:  # a normal close (1000) first: cancelling the task inside the connection's
            with contextlib.suppress(Exception):  # context manager would close it with 1011 (internal error)
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.state = "closed"
        self._event("closed", **self.stats)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ------------------------------------------------------------------ session
    def _event(self, what: str, **fields: Any) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps({"t": round(time.time(), 3), "event": what, **fields}) + "\n")
            self._log_file.flush()

    def _inject_data(self) -> dict[str, Any]:
        return {"faceFound": bool(self.cfg.face_found), "mode": "set", "parameterValues": self._values}

    async def _send(self, ws: ClientConnection, message_type: str, data: dict[str, Any] | None = None) -> str:
        request_id = f"msync-{next(self._ids)}"
        msg: dict[str, Any] = {
            "apiName": API_NAME,
            "apiVersion": API_VERSION,
            "requestID": request_id,
            "messageType": message_type,
        }
        if data is not None:
            msg["data"] = data
        await ws.send(json.dumps(msg))
        return request_id

    async def _request(
        self, ws: ClientConnection, message_type: str, data: dict[str, Any] | None, expect: str, timeout_s: float
    ) -> dict[str, Any]:
        """Send one request and return the data of its answer; raises VtsError on APIError or a wrong answer."""
        request_id = await self._send(ws, message_type, data)
        deadline = time.monotonic() + timeout_s
        while True:
            raw = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
            try:
                msg = json.loads(raw)
            except ValueError:
                raise VtsError(f"VTube Studio sent something that is not JSON: {str(raw)[:80]!r}") from None
            if msg.get("requestID") != request_id:
                continue  # a late answer to an earlier request
            body = msg.get("data") or {}
            if msg.get("messageType") == "APIError":
                raise VtsError(
                    f"{message_type}: APIError {body.get('errorID')}: {body.get('message', '')}", body.get("errorID")
                )
            if msg.get("messageType") != expect:
                raise VtsError(f"{message_type}: expected {expect}, got {msg.get('messageType')!r}")
            return body

    async def _authenticate(self, ws: ClientConnection) -> None:
        cfg = self.cfg
        state = await self._request(ws, "APIStateRequest", None, "APIStateResponse", 5.0)
        self._event(
            "api_state",
            active=state.get("active"),
            version=state.get("vTubeStudioVersion"),
            authenticated=state.get("currentSessionAuthenticated"),
        )
        if state.get("active") is False:
            raise VtsError("VTube Studio's API is switched off (Settings -> Start API)")
        plugin = {"pluginName": cfg.plugin_name, "pluginDeveloper": cfg.plugin_developer}
        token = self.tokens.load(cfg.url)
        if token:
            self.state = "authenticating"
            auth = await self._request(
                ws, "AuthenticationRequest", {**plugin, "authenticationToken": token}, "AuthenticationResponse", 5.0
            )
            self._event(
                "authentication",
                stored_token=True,
                authenticated=bool(auth.get("authenticated")),
                reason=auth.get("reason", ""),
            )
            if auth.get("authenticated"):
                return
            self.tokens.forget(cfg.url)  # revoked in VTube Studio: ask for a new one
        self.state = "waiting_for_user"
        log.warning("VTube Studio: allow the plugin %r in VTube Studio's pop-up", cfg.plugin_name)
        self._event("token_requested")
        try:
            answer = await self._request(
                ws, "AuthenticationTokenRequest", plugin, "AuthenticationTokenResponse", cfg.token_timeout_s
            )
        except VtsError as exc:
            self._event("token_refused", error_id=exc.error_id, message=str(exc))
            raise
        token = answer.get("authenticationToken")
        if not isinstance(token, str) or not token:
            raise VtsError("AuthenticationTokenResponse without a token")
        self.tokens.save(cfg.url, token)
        self._event("token_stored", file=str(self.tokens.path))
        self.state = "authenticating"
        auth = await self._request(
            ws, "AuthenticationRequest", {**plugin, "authenticationToken": token}, "AuthenticationResponse", 5.0
        )
        self._event(
            "authentication",
            stored_token=False,
            authenticated=bool(auth.get("authenticated")),
            reason=auth.get("reason", ""),
        )
        if not auth.get("authenticated"):
            raise VtsError(f"VTube Studio refused the new token: {auth.get('reason', '')}")

    async def _stream(self, ws: ClientConnection) -> None:
        """Inject the latest values at `rate_hz`; read answers concurrently."""
        self.state = "streaming"
        self._event("streaming", rate_hz=self.cfg.rate_hz, parameters=list(PARAMETERS))

        async def read_answers() -> None:
            async for raw in ws:
                self.stats["answers"] += 1
                with contextlib.suppress(ValueError, AttributeError):
                    msg = json.loads(raw)
                    if msg.get("messageType") == "APIError":
                        self.stats["errors"] += 1
                        body = msg.get("data") or {}
                        if self.stats["errors"] <= 5:
                            log.warning("VTube Studio: APIError %s: %s", body.get("errorID"), body.get("message"))
                            self._event("api_error", error_id=body.get("errorID"), message=body.get("message"))
                        if body.get("errorID") == ERROR_REQUIRES_AUTHENTICATION:
                            raise VtsError(
                                "VTube Studio says the session is not authenticated", ERROR_REQUIRES_AUTHENTICATION
                            )

        reader = asyncio.get_running_loop().create_task(read_answers())
        period = 1.0 / self.cfg.rate_hz
        next_t = time.monotonic()
        try:
            while not reader.done():
                await self._send(ws, "InjectParameterDataRequest", self._inject_data())
                self.stats["sent"] += 1
                next_t += period
                delay = next_t - time.monotonic()
                if delay < -period:  # fell behind (a stalled socket): skip, never burst
                    next_t = time.monotonic()
                    delay = 0.0
                await asyncio.wait([reader], timeout=max(0.0, delay))
            reader.result()  # raises what ended the reader
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        backoff = self.cfg.reconnect_min_s
        while not self._closing:
            self.state = "connecting"
            try:
                async with connect(self.cfg.url, open_timeout=5, close_timeout=1, max_size=2**20) as ws:
                    self._ws = ws
                    self.stats["connects"] += 1
                    self._event("connected", url=self.cfg.url)
                    try:
                        await self._authenticate(ws)
                        backoff = self.cfg.reconnect_min_s
                        await self._stream(ws)
                    except VtsError:  # VTube Studio's own answer (a refused token, a denied plugin): a normal
                        await ws.close()  # close (1000), not the context manager's 1011 for an exception
                        raise
            except asyncio.CancelledError:
                raise
            except VtsError as exc:
                if exc.error_id == ERROR_TOKEN_REQUEST_DENIED:
                    self.state = "denied"
                    log.error(
                        "VTube Studio: the user denied msync's plugin request; VTube Studio output is off "
                        "until msync restarts"
                    )
                    return
                log.warning("VTube Studio: %s", exc)
                self._event("error", message=str(exc), error_id=exc.error_id)
            except (OSError, asyncio.TimeoutError, Exception) as exc:  # refused, reset, closed: retry
                if self.stats["reconnects"] < 3 or self.stats["reconnects"] % 20 == 0:
                    log.warning(
                        "VTube Studio at %s: %s (retrying in %.1f s)", self.cfg.url, exc or type(exc).__name__, backoff
                    )
                self._event("disconnected", reason=f"{type(exc).__name__}: {exc}", retry_in_s=backoff)
            finally:
                self._ws = None
            if self._closing:
                return
            self.stats["reconnects"] += 1
            self.state = "idle"
            await asyncio.sleep(backoff)
            backoff = min(self.cfg.reconnect_max_s, backoff * 2.0)
