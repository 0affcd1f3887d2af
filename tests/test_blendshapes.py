"""ARKit-52 blendshapes from 68 landmarks, and viseme weights that split the mouth openness by shape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_engine.blendshapes import ARKIT_INDEX, ARKIT_NAMES, SUPPORTED, arkit_blendshapes, face_features
from stream_engine.signals import VISEMES, viseme_weights

from fakes import NEUTRAL_FACE, project_face


def _w(face, name, neutral=NEUTRAL_FACE, **kw):
    return float(arkit_blendshapes(face, neutral, **kw)[ARKIT_INDEX[name]])


def _moved(points, moves):
    p = np.array(points, dtype=np.float64)
    for idx, (dx, dy) in moves.items():
        p[idx] += (dx, dy)
    return p


def test_names_are_the_52_arkit_shapes_and_the_neutral_face_is_all_zero():
    assert len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    w = arkit_blendshapes(NEUTRAL_FACE, NEUTRAL_FACE, blink=0.0)
    assert w.shape == (52,) and w.dtype == np.float32 and np.all(w == 0.0)
    w = arkit_blendshapes(project_face(0, 0, 0, 20.0), NEUTRAL_FACE, blink=1.0)
    unsupported = [i for i, n in enumerate(ARKIT_NAMES) if n not in SUPPORTED]
    assert np.all(w[unsupported] == 0.0) and np.all((w >= 0) & (w <= 1))
    assert w[ARKIT_INDEX["eyeBlinkLeft"]] == w[ARKIT_INDEX["eyeBlinkRight"]] == 1.0


def test_jaw_open_grows_with_the_lip_gap():
    values = [_w(project_face(0, 0, 0, mm), "jawOpen") for mm in (0, 3, 6, 10, 20)]
    assert values[0] == 0.0 and all(b > a for a, b in zip(values, values[1:4])) and values[-1] == 1.0


def test_invariant_to_in_plane_rotation_scale_and_translation():
    face, ref = project_face(0, 0, 0, 6.0), NEUTRAL_FACE
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def warp(p):
        return (p - 0.5) @ rot.T * 2.0 + np.array([3.0, -1.0])

    np.testing.assert_allclose(arkit_blendshapes(warp(face), warp(ref)), arkit_blendshapes(face, ref), atol=1e-5)


def test_left_and_right_are_the_subjects_own_sides():
    """iBUG point 54 is the subject's left mouth corner (image right when not mirrored)."""
    iod = float(np.linalg.norm(NEUTRAL_FACE[36] - NEUTRAL_FACE[45]))
    left_up = _moved(NEUTRAL_FACE, {54: (0.0, -0.04 * iod)})
    assert _w(left_up, "mouthSmileLeft") > 0.5 and _w(left_up, "mouthSmileRight") == 0.0
    both_down = _moved(NEUTRAL_FACE, {48: (0.0, 0.04 * iod), 54: (0.0, 0.04 * iod)})
    assert _w(both_down, "mouthFrownLeft") > 0.5 and _w(both_down, "mouthFrownRight") > 0.5
    right_out = _moved(NEUTRAL_FACE, {48: (-0.05 * iod, 0.0)})
    assert _w(right_out, "mouthStretchRight") > 0.5 and _w(right_out, "mouthStretchLeft") == 0.0


def test_pucker_funnel_and_brows():
    iod = float(np.linalg.norm(NEUTRAL_FACE[36] - NEUTRAL_FACE[45]))
    narrow = _moved(NEUTRAL_FACE, {48: (0.04 * iod, 0.0), 54: (-0.04 * iod, 0.0)})
    assert _w(narrow, "mouthPucker") > 0.5 and _w(narrow, "mouthFunnel") == 0.0
    narrow_open = _moved(project_face(0, 0, 0, 20.0), {48: (0.04 * iod, 0.0), 54: (-0.04 * iod, 0.0)})
    assert _w(narrow_open, "mouthFunnel") > 0.5 and _w(narrow_open, "mouthPucker") < 0.1
    raised = _moved(NEUTRAL_FACE, {21: (0.0, -0.06 * iod), 22: (0.0, -0.06 * iod)})
    assert _w(raised, "browInnerUp") > 0.9 and _w(raised, "browDownLeft") == 0.0
    lowered = _moved(NEUTRAL_FACE, {19: (0.0, 0.04 * iod), 24: (0.0, 0.04 * iod)})
    assert _w(lowered, "browDownLeft") > 0.9 and _w(lowered, "browDownRight") > 0.9


def test_batched_arrays_in_and_out_match_one_frame_at_a_time():
    rng = np.random.default_rng(0)
    faces = np.stack([project_face(0, 0, 0, mm) for mm in (0, 4, 8, 12)])[None].repeat(3, 0)
    faces = faces + rng.normal(0, 0.002, faces.shape)
    blink = rng.uniform(0, 1, (3, 4))
    batched = arkit_blendshapes(faces, NEUTRAL_FACE, blink)
    assert batched.shape == (3, 4, 52)
    for b in range(3):
        for t in range(4):
            np.testing.assert_allclose(
                batched[b, t], arkit_blendshapes(faces[b, t], NEUTRAL_FACE, blink[b, t]), atol=1e-6
            )
    assert face_features(faces).shape == (3, 4, 22)
    with pytest.raises(ValueError):
        arkit_blendshapes(np.zeros((5, 2)), NEUTRAL_FACE)


@pytest.mark.parametrize(
    "openness,spread,rounding,dominant",
    [(0.8, 0.0, 0.0, "A"), (0.3, 1.0, 0.0, "I"), (0.8, 1.0, 0.0, "E"), (0.3, 0.0, 1.0, "U"), (0.8, 0.0, 1.0, "O")],
)
def test_visemes_split_the_openness_by_shape(openness, spread, rounding, dominant):
    """Their sum is the openness (the avatar's mouth carries the face); the shape picks the vowel."""
    w = dict(zip(VISEMES, viseme_weights(openness, spread, rounding)))
    assert sum(w.values()) == pytest.approx(openness)
    assert max(w, key=w.get) == dominant
    assert sum(viseme_weights(0.0, 1.0, 0.0)) == 0.0  # a closed mouth shows no viseme, whatever its width
