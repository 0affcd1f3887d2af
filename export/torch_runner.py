"""The PyTorch reference backend: `Generator.step` behind the runtime's `StepRunner` interface.

The parity oracle for every other backend (ORT, TensorRT, the C++ client). Lives in `export/` because
`stream_engine` never imports torch.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

from export.reference_face import resolve_reference_face
from export.step_module import build_contract
from stream_engine.contract import StepContract
from stream_engine.runtime.base import BaseStepRunner, State
from training.models.generator import Generator, StepState


class TorchStepRunner(BaseStepRunner):
    """Run `generator.step` on numpy inputs (float32, CPU by default, inference mode)."""

    def __init__(self, generator: Generator, contract: StepContract | None = None, device: str = "cpu") -> None:
        self.generator = generator.eval().to(device)
        self.device = torch.device(device)
        if contract is None:
            contract = build_contract(generator, resolve_reference_face(None, None, generator)[0])
        self.contract = contract

    def _run(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        names = self.contract.state_names
        with torch.inference_mode():
            st = StepState(**{n: torch.from_numpy(state[n]).to(self.device) for n in names})
            lm, nxt = self.generator.step(torch.from_numpy(audio).to(self.device), st)
            out = {n: cast(torch.Tensor, getattr(nxt, n)).detach().cpu().numpy().copy() for n in names}
            return lm.detach().cpu().numpy().copy(), out
