"""`msync serve`: the engine past one machine, on Ray Serve.

Each Ray Serve replica runs its own engine core (one runner, batched across the streams it holds); a WebSocket
connection stays on the replica that accepted it for its whole life, so a stream's state lives there. The
wire protocol is `msync stream`'s (`stream_engine.protocol`); PROTOCOL.md §8 lists what differs.

Modules: `config` (ServeConfig), `replica` (the per-replica engine and the WebSocket transport over an ASGI
socket; no Ray), `app` (the Ray Serve deployment), `cli` (`msync serve`). Nothing in the runtime imports this
package; it needs the `serve` extra (`pip install 'msync[serve]'`).
"""
