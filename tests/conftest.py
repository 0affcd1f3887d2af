"""Shared fixtures: paths to ../shared/data, a real speech clip, and skips with reasons."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SPEECH_CLIP = SHARED_DATA / "clips" / "deepavsr__audio_only__demo__00001.mp4.flac"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "manifest.tsv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI provides ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def speech(shared_data) -> np.ndarray:
    from stream_engine.audio_io import load_audio

    return load_audio(SPEECH_CLIP)


def pytest_configure(config):
    # The models under test are small: one intra-op thread is faster than two fighting over two cores.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
