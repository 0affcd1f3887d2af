// msync live viewer: subscribes to /frames (binary format v1, PROTOCOL.md) and draws the newest frame of the
// selected stream: landmarks and contours, a head-pose gizmo, rig signals and latency.
// Test hook: window.msync.framesDrawn counts frames actually drawn on the canvas.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const wsBase = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
const q = (extra) => "?" + new URLSearchParams(Object.assign(token ? { token } : {}, extra)).toString();

const state = {
  framesDrawn: 0, framesReceived: 0, lastSeq: {}, lost: 0, hello: null, latest: null, selected: "",
  streams: new Set(), arrivals: [], connected: false,
};
window.msync = state;

const canvas = document.getElementById("face");
const ctx = canvas.getContext("2d");
const $ = (id) => document.getElementById(id);
const SIGNALS = ["mouth_open", "A", "I", "U", "E", "O", "blink", "yaw_deg", "pitch_deg", "roll_deg", "audio_dbfs", "silent"];

function decodeFrame(buf) {
  const dv = new DataView(buf);
  const magic = String.fromCharCode(dv.getUint8(0), dv.getUint8(1), dv.getUint8(2), dv.getUint8(3));
  if (magic !== "MSLM" || dv.getUint8(4) !== 1) throw new Error("not an msync v1 frame");
  const headerBytes = dv.getUint16(6, true);
  const i64 = (o) => Number(dv.getBigInt64(o, true));
  const k = dv.getUint16(72, true), d = dv.getUint8(74), s = dv.getUint8(75), idLen = dv.getUint8(76);
  const stream = new TextDecoder().decode(new Uint8Array(buf, 77, idLen));
  const floats = new Float32Array(buf, headerBytes, k * d + s);
  const signals = {};
  (state.hello ? state.hello.signal_names : SIGNALS).forEach((name, i) => { if (i < s) signals[name] = floats[k * d + i]; });
  return {
    stream, seq: dv.getUint32(8, true), epoch: dv.getUint32(12, true), index: dv.getUint32(16, true),
    flags: dv.getUint32(20, true), pts_ms: i64(24) / 1e6,
    t: { audio_ready_ns: i64(32), infer_start_ns: i64(40), infer_end_ns: i64(48), publish_ns: i64(56), sent_ns: i64(64) },
    k, d, points: floats.subarray(0, k * d), signals,
  };
}

function onFrame(frame) {
  state.framesReceived++;
  if (!state.streams.has(frame.stream)) {
    state.streams.add(frame.stream);
    const opt = document.createElement("option");
    opt.value = opt.textContent = frame.stream;
    $("stream").appendChild(opt);
  }
  const last = state.lastSeq[frame.stream];
  if (last !== undefined && frame.seq > last + 1) state.lost += frame.seq - last - 1;
  state.lastSeq[frame.stream] = frame.seq;
  if (state.selected && frame.stream !== state.selected) return;
  state.latest = frame;
  state.arrivals.push(performance.now());
  if (state.arrivals.length > 50) state.arrivals.shift();
}

function drawGizmo(cx, cy, size, yaw, pitch, roll) {
  // Rotate unit axes by R = Rz(roll) Ry(yaw) Rx(pitch) (image axes: x right, y down, z away from viewer).
  const r = (a) => (a * Math.PI) / 180;
  const [cy_, sy] = [Math.cos(r(yaw)), Math.sin(r(yaw))];
  const [cp, sp] = [Math.cos(r(pitch)), Math.sin(r(pitch))];
  const [cr, sr] = [Math.cos(r(roll)), Math.sin(r(roll))];
  const rot = (v) => {
    let [x, y, z] = v;
    [y, z] = [cp * y + sp * z, -sp * y + cp * z];   // Rx
    [x, z] = [cy_ * x - sy * z, sy * x + cy_ * z];   // Ry
    [x, y] = [cr * x + sr * y, -sr * x + cr * y];   // Rz
    return [x, y, z];
  };
  const axes = [[[1, 0, 0], "#ff6b6b"], [[0, -1, 0], "#7ddc7d"], [[0, 0, -1], "#5eb1ff"]];
  for (const [v, color] of axes) {
    const [x, y] = rot(v);
    ctx.strokeStyle = color; ctx.lineWidth = 3;
    ctx.beginPath(); ctx.moveTo(cx, cy); ctx.lineTo(cx + x * size, cy + y * size); ctx.stroke();
  }
}

function draw() {
  const f = state.latest;
  if (f && f !== state.drawn) {
    state.drawn = f;
    const W = canvas.width, H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    const P = (i) => [f.points[i * f.d] * W, f.points[i * f.d + 1] * H];
    ctx.strokeStyle = "#5eb1ff"; ctx.lineWidth = 2;
    for (const contour of (state.hello ? state.hello.contours : [])) {
      ctx.beginPath();
      contour.forEach((i, n) => { const [x, y] = P(i); n ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.stroke();
    }
    ctx.fillStyle = "#ffd166";
    for (let i = 0; i < f.k; i++) { const [x, y] = P(i); ctx.fillRect(x - 2, y - 2, 4, 4); }
    const s = f.signals;
    if (s.yaw_deg !== undefined) drawGizmo(W - 60, 60, 40, s.yaw_deg, s.pitch_deg, s.roll_deg);
    state.framesDrawn++;
    $("frames-drawn").textContent = state.framesDrawn;
    updatePanel(f);
  }
  requestAnimationFrame(draw);
}

function updatePanel(f) {
  const ms = (ns) => (ns / 1e6).toFixed(1) + " ms";
  $("v-stream").textContent = f.stream;
  $("v-seq").textContent = f.seq + " / " + f.epoch;
  $("v-pts").textContent = (f.pts_ms / 1000).toFixed(2) + " s";
  const a = state.arrivals;
  if (a.length > 2) $("v-fps").textContent = ((a.length - 1) * 1000 / (a[a.length - 1] - a[0])).toFixed(1) + " fps";
  if (state.hello) $("v-algo").textContent = state.hello.latency.algorithmic_latency_ms.toFixed(0) + " ms (L=" + state.hello.latency.lookahead_frames + ")";
  $("v-engine").textContent = ms(f.t.sent_ns - f.t.audio_ready_ns) + " (ready→sent)";
  $("v-step").textContent = ms(f.t.infer_end_ns - f.t.infer_start_ns);
  $("v-lost").textContent = state.lost;
  const s = f.signals;
  if (s.yaw_deg !== undefined) $("v-head").textContent = [s.yaw_deg, s.pitch_deg, s.roll_deg].map((v) => v.toFixed(1) + "°").join(" / ");
  for (const name of ["mouth_open", "A", "I", "U", "E", "O", "blink"]) {
    if (s[name] !== undefined) $("b-" + name).style.width = Math.round(Math.max(0, Math.min(1, s[name])) * 160) + "px";
  }
  if (s.audio_dbfs !== undefined) $("v-db").textContent = s.audio_dbfs.toFixed(1) + " dBFS" + (s.silent ? " (silent)" : "");
}

function connect() {
  const ws = new WebSocket(wsBase + "/frames" + q({ format: "binary" }));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { state.connected = true; $("status").textContent = "connected"; $("status").className = "ok"; };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "hello") state.hello = msg;
      else if (msg.type === "stream" && msg.event === "reset") $("note").textContent = "stream " + msg.stream + " reset (epoch " + msg.epoch + ")";
      else if (msg.type === "error") $("note").textContent = msg.message;
      return;
    }
    try { onFrame(decodeFrame(ev.data)); } catch (e) { $("note").textContent = String(e); }
  };
  ws.onclose = () => {
    state.connected = false; $("status").textContent = "disconnected, retrying…"; $("status").className = "bad";
    setTimeout(connect, 1000);
  };
}

$("stream").onchange = (ev) => { state.selected = ev.target.value; };

// Drive a stream from this browser: microphone -> AudioWorklet -> float32 PCM chunks over /audio.
$("mic").onclick = async () => {
  try {
    const media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false } });
    const ac = new AudioContext();
    const worklet = `registerProcessor("pcm-tap", class extends AudioWorkletProcessor {
      process(inputs) { const ch = inputs[0][0]; if (ch) this.port.postMessage(ch.slice(0)); return true; } });`;
    await ac.audioWorklet.addModule(URL.createObjectURL(new Blob([worklet], { type: "text/javascript" })));
    const node = new AudioWorkletNode(ac, "pcm-tap");
    ac.createMediaStreamSource(media).connect(node);
    const ws = new WebSocket(wsBase + "/audio" + q({}));
    ws.binaryType = "arraybuffer";
    let pending = [], pendingLen = 0;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", v: 1, sample_rate_hz: ac.sampleRate, channels: 1, dtype: "float32" }));
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "ready") { state.selected = msg.stream; $("note").textContent = "streaming your microphone as " + msg.stream; }
      else if (msg.type === "error") $("note").textContent = msg.message;
    };
    node.port.onmessage = (ev) => {  // batch 128-sample render quanta into ~20 ms chunks
      pending.push(ev.data); pendingLen += ev.data.length;
      if (pendingLen >= ac.sampleRate / 50 && ws.readyState === 1) {
        const out = new Float32Array(pendingLen); let o = 0;
        for (const p of pending) { out.set(p, o); o += p.length; }
        ws.send(out.buffer); pending = []; pendingLen = 0;
      }
    };
    $("mic").disabled = true;
  } catch (e) { $("note").textContent = "microphone: " + e; }
};

connect();
requestAnimationFrame(draw);
