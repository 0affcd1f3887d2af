"""msync's runtime: live speech -> 68 facial landmarks per 40 ms frame.

The Python API (`stream_engine.api`)::

    from stream_engine import Engine
    engine = Engine()                         # the shipped default model
    stream = engine.open_stream()
    frames = stream.push(pcm, sample_rate=16000) + stream.flush()

Whole files: ``animation = stream_engine.animate("talk.wav")`` (`stream_engine.animation`: landmarks (T, 68, 2),
signals, ARKit blendshapes, T = ceil(duration x 25)).

`Engine`, `Stream`, `Frame`, `animate` and `Animation` are imported lazily (``import stream_engine`` alone loads nothing heavy).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Engine", "Stream", "Frame", "animate", "Animation"]


def __getattr__(name: str) -> Any:
    if name in ("animate", "Animation"):
        from stream_engine import animation

        return getattr(animation, name)
    if name in __all__:
        from stream_engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'stream_engine' has no attribute {name!r}")
