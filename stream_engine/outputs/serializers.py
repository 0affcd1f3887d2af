"""Wire formats of a landmark frame: JSON text and compact binary, both versioned (see PROTOCOL.md).

Binary frame, format version 1, all little-endian::

    offset size type     field
    0      4    bytes    magic b"MSLM"
    4      1    u8       format version (1)
    5      1    u8       message kind (1 = landmark frame)
    6      2    u16      header_bytes: offset of the float data (a multiple of 4)
    8      4    u32      seq
    12     4    u32      epoch
    16     4    u32      index (frame index within the epoch)
    20     4    u32      flags: bit 0 = silent, bit 1 = signals present, bit 2 = stalled (no audio arrived:
                             the engine fed silence so the face returns to rest)
    24     8    i64      pts_ns (stream time of the frame's first audio sample)
    32     8    i64      audio_ready_ns   \\
    40     8    i64      infer_start_ns    | engine clock (monotonic ns on the engine host)
    48     8    i64      infer_end_ns      |
    56     8    i64      publish_ns        |
    64     8    i64      sent_ns          /
    72     2    u16      num_landmarks (K)
    74     1    u8       landmark_dims (D)
    75     1    u8       num_signals (S)
    76     1    u8       stream id length in bytes (UTF-8, <= 255)
    77     ..            stream id, then zero padding up to header_bytes
    header_bytes         float32[K * D] landmarks (x0, y0, x1, y1, ...), then float32[S] signals in
                         `signals.SIGNAL_NAMES` order

Readers must check magic and version, and use header_bytes/K/D/S rather than fixed offsets, so fields can be
appended in later minor revisions. 68 landmarks + 12 signals + a short id is about 670 bytes.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from stream_engine.core import LandmarkFrame
from stream_engine.frame_batch import FrameBatch
from stream_engine.signals import SIGNAL_NAMES

FORMAT_VERSION = 1
MAGIC = b"MSLM"
KIND_FRAME = 1
FLAG_SILENT = 1
FLAG_SIGNALS = 2
FLAG_STALLED = 4
_HEADER = struct.Struct("<4sBBHIIIIqqqqqqHBBB")  # 77 bytes, then the stream id
_PADS = [b"\0" * i for i in range(4)]


def _pack_header(
    sid: bytes,
    seq: int,
    epoch: int,
    index: int,
    flags: int,
    pts_ns: int,
    ready_ns: int,
    timing: tuple[int, ...],
    k: int,
    d: int,
    s: int,
) -> bytes:
    """A frame message's header, stream id (`sid`, UTF-8, at most 255 bytes) and padding to a multiple of 4
    bytes (binary format v1); `timing` = (infer_start_ns, infer_end_ns, publish_ns, sent_ns)."""
    header_bytes = -(-(_HEADER.size + len(sid)) // 4) * 4
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        KIND_FRAME,
        header_bytes,
        seq & 0xFFFFFFFF,
        epoch & 0xFFFFFFFF,
        index & 0xFFFFFFFF,
        flags,
        pts_ns,
        ready_ns,
        *timing,
        k,
        d,
        s,
        len(sid),
    )
    return b"".join((head, sid, _PADS[header_bytes - _HEADER.size - len(sid)]))


def _frame_header(frame: LandmarkFrame, k: int, d: int, num_signals: int, sent_ns: int) -> bytes:
    """`_pack_header` of one frame object."""
    sg = frame.signals
    flags = (FLAG_SIGNALS if sg is not None else 0) | (FLAG_SILENT if sg is not None and sg.silent else 0)
    flags |= FLAG_STALLED if frame.stalled else 0
    t = frame.timings
    timing = (t.infer_start_ns, t.infer_end_ns, t.publish_ns, sent_ns)
    sid = frame.stream_id.encode("utf-8")[:255]
    return _pack_header(
        sid, frame.seq, frame.epoch, frame.index, flags, frame.pts_ns, t.audio_ready_ns, timing, k, d, num_signals
    )


def encode_binary(frame: LandmarkFrame, sent_ns: int = 0) -> bytes:
    """One frame -> binary format v1 (`sent_ns` is stamped by the sender just before sending)."""
    lm = np.ascontiguousarray(frame.landmarks, dtype="<f4")
    k, d = lm.shape
    signals = frame.signals.as_vector() if frame.signals is not None else []
    head = _frame_header(frame, k, d, len(signals), int(sent_ns))
    return b"".join((head, lm.tobytes(), np.asarray(signals, dtype="<f4").tobytes()))


def encode_binary_many(frames: Sequence[LandmarkFrame], sent_ns: int = 0) -> list[bytes]:
    """Frames -> binary format v1, one message per frame, the same bytes as `encode_binary` for each.

    The float payload (landmarks, then signals) of every frame is converted to little-endian float32 in one
    array operation and each header packed from plain values, instead of per-frame numpy conversions: the
    publisher of a step serialises its frames together. Frames whose landmarks have another shape than the
    first frame's are encoded one by one.
    """
    n = len(frames)
    if n == 0:
        return []
    shape = np.shape(frames[0].landmarks)
    if len(shape) != 2 or any(np.shape(f.landmarks) != shape for f in frames):
        return [encode_binary(f, sent_ns) for f in frames]
    k, d = shape
    sig_rows: list[tuple[float, ...] | None] = []
    for f in frames:
        sg = f.signals
        if sg is None:
            sig_rows.append(None)
            continue
        v, h = sg.visemes, sg.head
        sig_rows.append(
            (
                sg.mouth_open,
                v["A"],
                v["I"],
                v["U"],
                v["E"],
                v["O"],
                sg.blink,
                h.yaw_deg,
                h.pitch_deg,
                h.roll_deg,
                sg.audio_dbfs,
                1.0 if sg.silent else 0.0,
            )
        )
    s = len(SIGNAL_NAMES)
    payload = np.zeros((n, k * d + s), dtype="<f4")
    payload[:, : k * d] = np.stack([f.landmarks for f in frames]).reshape(n, k * d)
    with_signals = [i for i, r in enumerate(sig_rows) if r is not None]
    if with_signals:
        payload[with_signals, k * d :] = [sig_rows[i] for i in with_signals]
    full, bare = k * d + s, k * d
    sent = int(sent_ns)
    out = []
    for i, f in enumerate(frames):
        has = f.signals is not None
        head = _frame_header(f, k, d, s if has else 0, sent)
        out.append(head + payload[i, : full if has else bare].tobytes())
    return out


@functools.lru_cache(maxsize=64)
def _batch_layout(pad: int, k: int, d: int, s: int) -> np.dtype:
    """The binary v1 message as one packed numpy record: header fields, the stream id field of `pad` bytes
    (id plus zero padding to the float data), landmarks and signals (`encode_binary_batch`)."""
    fields: list[tuple[Any, ...]] = [
        ("magic", "S4"),
        ("version", "u1"),
        ("kind", "u1"),
        ("header_bytes", "<u2"),
        ("seq", "<u4"),
        ("epoch", "<u4"),
        ("index", "<u4"),
        ("flags", "<u4"),
        ("pts_ns", "<i8"),
        ("audio_ready_ns", "<i8"),
        ("infer_start_ns", "<i8"),
        ("infer_end_ns", "<i8"),
        ("publish_ns", "<i8"),
        ("sent_ns", "<i8"),
        ("k", "<u2"),
        ("d", "u1"),
        ("s", "u1"),
        ("sid_len", "u1"),
        ("sid", f"S{pad}"),
        ("landmarks", "<f4", (k * d,)),
    ]
    if s:
        fields.append(("signals", "<f4", (s,)))
    dtype = np.dtype(fields)  # packed: no alignment padding, exactly the wire layout
    assert dtype.itemsize == _HEADER.size + pad + 4 * (k * d + s)
    return dtype


def encode_binary_batch(batch: FrameBatch, sent_ns: int = 0, rows: Sequence[int] | None = None) -> list[bytes]:
    """The rows of a published `FrameBatch` -> binary format v1, one message per row, the same bytes as
    `encode_binary(batch.frame(i))`, straight from the batch's columns: no frame or signal objects, every field
    of every message written by one array assignment per field (rows grouped by header size, which follows
    the stream id's length), one `tobytes`, then one slice per message.

    Args:
        batch: the published step.
        sent_ns: stamped into every message (the sender's clock just before sending).
        rows: which rows, in that order (None: all).
    """
    if (len(batch) if rows is None else len(rows)) <= SMALL_BATCH:
        return _encode_rows(batch, sent_ns, range(len(batch)) if rows is None else rows)
    idx = np.arange(len(batch)) if rows is None else np.asarray(rows, dtype=np.intp)
    n = int(idx.size)
    k, d = batch.landmarks.shape[1:]
    sg = batch.signals
    s = len(SIGNAL_NAMES) if sg is not None else 0
    ids = batch.stream_ids
    sids = [ids[i].encode("utf-8")[:255] for i in idx.tolist()]
    lens = np.fromiter(map(len, sids), dtype=np.int64, count=n)
    pads = -(-(_HEADER.size + lens) // 4) * 4 - _HEADER.size  # id + padding, as `_frame_header`
    out: list[bytes] = [b""] * n
    groups = [pads[0]] if (pads == pads[0]).all() else np.unique(pads).tolist()
    for pad in groups:
        at = np.arange(n) if len(groups) == 1 else np.flatnonzero(pads == pad)
        r = idx[at]
        rec = np.zeros(at.size, dtype=_batch_layout(int(pad), k, d, s))
        rec["magic"] = MAGIC
        rec["version"] = FORMAT_VERSION
        rec["kind"] = KIND_FRAME
        rec["header_bytes"] = _HEADER.size + pad
        rec["seq"] = batch.seqs[r] & 0xFFFFFFFF
        rec["epoch"] = batch.epochs[r] & 0xFFFFFFFF
        rec["index"] = batch.indices[r] & 0xFFFFFFFF
        flags = np.where(batch.stalled[r], FLAG_STALLED, 0)
        if sg is not None:
            flags |= np.where(sg.silent[r], FLAG_SIGNALS | FLAG_SILENT, FLAG_SIGNALS)
        rec["flags"] = flags
        rec["pts_ns"] = batch.pts_ns[r]
        rec["audio_ready_ns"] = batch.audio_ready_ns[r]
        rec["infer_start_ns"] = batch.infer_start_ns
        rec["infer_end_ns"] = batch.infer_end_ns
        rec["publish_ns"] = batch.publish_ns
        rec["sent_ns"] = int(sent_ns)
        rec["k"], rec["d"], rec["s"] = k, d, s
        rec["sid_len"] = lens[at]
        rec["sid"] = [sids[i] for i in at.tolist()]
        rec["landmarks"] = batch.landmarks[r].reshape(at.size, k * d)
        if sg is not None:
            rec["signals"] = sg.vectors(r)
        size = rec.dtype.itemsize
        data = rec.tobytes()
        for j, pos in enumerate(at.tolist()):
            out[pos] = data[j * size : (j + 1) * size]
    return out


#: At most this many rows are serialised row by row (`_encode_rows`): the array pass costs some 25 numpy calls
#: whatever the row count, about 28 against 14 us for one frame in the engine (engine_14i_notes.md).
SMALL_BATCH = 4


def _encode_rows(batch: FrameBatch, sent_ns: int, rows: Iterable[int]) -> list[bytes]:
    """`encode_binary_batch` one row at a time (few rows): each header packed from the columns' values, the
    float payload as one little-endian float32 conversion per row."""
    sg = batch.signals
    timing = (int(batch.infer_start_ns), int(batch.infer_end_ns), int(batch.publish_ns), int(sent_ns))
    k, d = batch.landmarks.shape[1:]
    s = len(SIGNAL_NAMES) if sg is not None else 0
    out = []
    for i in rows:
        flags = FLAG_STALLED if batch.stalled[i] else 0
        payload = np.empty(k * d + s, dtype="<f4")
        payload[: k * d] = batch.landmarks[i].reshape(-1)
        if sg is not None:  # `SignalBatch.vectors` of one row, written element-wise (its fancy indexing costs 2x here)
            silent = bool(sg.silent[i])
            flags |= FLAG_SIGNALS | (FLAG_SILENT if silent else 0)
            payload[k * d] = sg.mouth_open[i]
            payload[k * d + 1 : k * d + 6] = sg.visemes[i]
            payload[k * d + 6] = sg.blink[i]
            payload[k * d + 7 : k * d + 10] = sg.head_deg[i]
            payload[k * d + 10] = sg.audio_dbfs[i]
            payload[k * d + 11] = 1.0 if silent else 0.0
        head = _pack_header(
            batch.stream_ids[i].encode("utf-8")[:255],
            batch.seqs.item(i),
            batch.epochs.item(i),
            batch.indices.item(i),
            flags,
            batch.pts_ns.item(i),
            batch.audio_ready_ns.item(i),
            timing,
            k,
            d,
            s,
        )
        out.append(head + payload.tobytes())
    return out


def decode_binary(data: bytes) -> dict[str, Any]:
    """Binary frame -> dict with the JSON format's field names (clients, tests, benchmarks).

    Raises:
        ValueError: not an msync frame, an unknown major version, or truncated.
    """
    if len(data) < _HEADER.size:
        raise ValueError(f"binary frame too short ({len(data)} bytes)")
    (
        magic,
        version,
        kind,
        header_bytes,
        seq,
        epoch,
        index,
        flags,
        pts_ns,
        ready,
        t0,
        t1,
        pub,
        sent,
        k,
        d,
        s,
        sid_len,
    ) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    if version != FORMAT_VERSION or kind != KIND_FRAME:
        raise ValueError(f"unsupported binary frame version {version} kind {kind}")
    need = header_bytes + 4 * (k * d + s)
    if len(data) < need:
        raise ValueError(f"binary frame truncated: {len(data)} < {need} bytes")
    sid = bytes(data[_HEADER.size : _HEADER.size + sid_len]).decode("utf-8")
    floats = np.frombuffer(data, dtype="<f4", count=k * d + s, offset=header_bytes)
    out: dict[str, Any] = {
        "type": "frame",
        "v": version,
        "stream": sid,
        "seq": seq,
        "epoch": epoch,
        "index": index,
        "pts_ms": pts_ns / 1e6,
        "landmarks": floats[: k * d].reshape(k, d).astype(np.float32),
        "t": {"audio_ready_ns": ready, "infer_start_ns": t0, "infer_end_ns": t1, "publish_ns": pub, "sent_ns": sent},
    }
    if flags & FLAG_SIGNALS:
        out["signal_vector"] = dict(zip(SIGNAL_NAMES, (float(v) for v in floats[k * d :])))
    out["silent"] = bool(flags & FLAG_SILENT)
    out["stalled"] = bool(flags & FLAG_STALLED)
    return out


def frame_to_json_dict(frame: LandmarkFrame, sent_ns: int = 0, decimals: int = 5) -> dict[str, Any]:
    """One frame -> the JSON format v1 object (before `json.dumps`)."""
    t = frame.timings
    out: dict[str, Any] = {
        "type": "frame",
        "v": FORMAT_VERSION,
        "stream": frame.stream_id,
        "seq": frame.seq,
        "epoch": frame.epoch,
        "index": frame.index,
        "pts_ms": frame.pts_ns / 1e6,
        "landmarks": np.round(frame.landmarks.astype(np.float64), decimals).tolist(),
        "audio_dbfs": round(float(frame.audio_level_dbfs), 2),
        "stalled": bool(frame.stalled),
        "t": {
            "audio_ready_ns": t.audio_ready_ns,
            "infer_start_ns": t.infer_start_ns,
            "infer_end_ns": t.infer_end_ns,
            "publish_ns": t.publish_ns,
            "sent_ns": int(sent_ns),
        },
    }
    if frame.signals is not None:
        out["signals"] = frame.signals.to_json()
    return out


def encode_json(frame: LandmarkFrame, sent_ns: int = 0) -> str:
    """One frame -> JSON text (format v1)."""
    return json.dumps(frame_to_json_dict(frame, sent_ns), separators=(",", ":"))


def encode_json_batch(
    batch: FrameBatch, sent_ns: int = 0, rows: Sequence[int] | None = None, decimals: int = 5
) -> list[str]:
    """The rows of a published `FrameBatch` -> JSON text (format v1), one message per row: `encode_json` of
    `batch.frame(i)` (built once per row and shared with the other consumers of the step). A column-wise copy
    of the format saved only ~5 % (`json.dumps` of the landmark floats dominates; serialise_batch_14i.md), not
    worth a second definition of the format.

    Args:
        batch: the published step.
        sent_ns: stamped into every message.
        rows: which rows, in that order (None: all).
        decimals: landmark decimals (as `frame_to_json_dict`).
    """
    dumps = json.dumps
    return [
        dumps(frame_to_json_dict(batch.frame(i), sent_ns, decimals), separators=(",", ":"))
        for i in (range(len(batch)) if rows is None else rows)
    ]
