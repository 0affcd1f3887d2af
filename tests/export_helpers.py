"""One exported step model shared by the export, Triton and TensorRT tests (the dynamo export takes ~10 s).

The model is an untrained generator with `velocity_scale` lowered to 2e-4 so that long autoregressive rollouts
stay bounded (an untrained generator with the default 0.01 drifts to |x| ~ 200 in a minute, where float32
rounding alone is 1.5e-5); it is saved as a trainer-style checkpoint and exported through `msync export
--checkpoint`, so the CLI and the checkpoint loader are exercised on the way.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, tuple] = {}

PARITY_VELOCITY_SCALE = 2e-4


def exported_model(tmp_path_factory):
    """(onnx path, generator, contract), made once per test session."""
    if "model" in _CACHE:
        return _CACHE["model"]
    import torch

    from export.reference_face import neutral_face
    from stream_engine.cli import main
    from stream_engine.contract import read_contract
    from training.checkpoint import save_module
    from training.models.generator import Generator, GeneratorConfig

    root = Path(tmp_path_factory.mktemp("export"))
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(velocity_scale=PARITY_VELOCITY_SCALE)).eval()
    face = neutral_face() + 0.01  # distinct from the shipped default, to see that the checkpoint's face is used
    ckpt = root / "run" / "checkpoint"
    save_module(
        ckpt,
        g,
        {
            "kind": "generator",
            "step": 123,
            "generator": g.cfg,
            "reference_face": face.tolist(),
            "training_data": {"clips": 0, "note": "test fixture, untrained"},
        },
    )
    out = root / "model.onnx"
    rc = main(["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert rc == 0
    _CACHE["model"] = (out, g, read_contract(out))
    return _CACHE["model"]


def step_parity(runner, g, pcm, tol: float = 1e-4):
    """Step the ONNX `runner` and the PyTorch generator `g` side by side over mono `pcm` (640 samples a step,
    a whole number of steps), one stream from the runner's initial state (rng seed 0) and the same state in
    PyTorch; assert every step's landmarks agree within `tol`. Returns (the runner's state, PyTorch's state)."""
    import numpy as np
    import torch

    state = runner.initial_state(1, rng=np.random.default_rng(0))
    tstate = g.initial_state(
        torch.from_numpy(state["reference_landmarks"]), torch.from_numpy(state["h"]), torch.from_numpy(state["c"])
    )
    spf = 640
    with torch.no_grad():
        for k in range(len(pcm) // spf):
            a = np.asarray(pcm[None, k * spf : (k + 1) * spf], np.float32)
            got, state = runner.step(a, state)
            want, tstate = g.step(torch.from_numpy(a), tstate)
            assert np.abs(got - want.numpy()).max() < tol, k
    return state, tstate
