"""ARKit-52 blendshape weights derived from 68 iBUG landmarks ("perfect sync" avatars, iFacialMocap-style rigs).

Arrays in, arrays out, over any number of frames (or of streams): `arkit_blendshapes(landmarks (..., 68, 2),
neutral (68, 2) or (..., 68, 2), blink (...)) -> (..., 52)` in `ARKIT_NAMES` order (Apple's
`ARFaceAnchor.BlendShapeLocation` list, alphabetical within ARKit's groups as iFacialMocap sends them). Weights
are in [0, 1]; shapes that 68 two-dimensional points cannot see (eye gaze, squint, cheek puff, tongue, sneer,
dimple, shrug, jaw forward) stay 0.

**Mapping.** Every measurement is taken in a face frame: origin between the eye centres, x along the line from
the subject's right eye (points 36-41) to its left eye (42-47), y perpendicular (down the face), unit = the
inter-ocular distance |p36 - p45|. So in-plane head roll, translation and scale do not leak into the weights.
Each weight is ``clip((feature - feature_of_neutral) / span, 0, 1)``: the deviation of one feature from the same
feature on the stream's neutral face, over a calibrated full-scale span. The engine starts the neutral at the
stream's reference face and lets it follow the face while the mouth is nearly closed, so
a generated face whose rest differs from its reference (brows a little lower, chin a little aside) does not
hold shapes at full weight (`SignalConfig.blendshape_neutral_s`, 3 s; the features are One-Euro filtered
with the mouth's settings first):

| blendshape | feature (face frame, / inter-ocular) |
|---|---|
| jawOpen | mean inner-lip gap (|61-67| + |62-66| + |63-65|) / 3 |
| mouthClose | chin drop (y8 - y33) not matched by a lip gap: chin-drop weight - jawOpen |
| mouthFunnel | mouth narrower than neutral (|48-54|) while open: narrowing x jawOpen share |
| mouthPucker | mouth narrower than neutral while closed: narrowing x (1 - jawOpen share) |
| mouthStretch L/R | mouth corner (54 left, 48 right) further out from the mouth centre along x |
| mouthSmile L/R | corner higher than the mouth's vertical centre (mean y of 51 and 57), vs neutral |
| mouthFrown L/R | corner lower than that centre, vs neutral |
| mouthPress L/R | that side's lip thickness (|52-63| + |56-65| left, |50-61| + |58-67| right) thinner, lips closed |
| mouthRollUpper / Lower | upper (|51-62|) / lower (|57-66|) lip thickness thinner than neutral |
| mouthUpperUp L/R | upper lip (52 left, 50 right) closer to the nose base (33) along y |
| mouthLowerDown L/R | lower lip (56 left, 58 right) further from the nose base along y |
| mouthLeft / Right | mouth centre (mean of 48, 54) moved along x, relative to the nose (27, 33) |
| jawLeft / Right | chin (8) moved along x towards the subject's left / right, relative to the nose bridge (27) |
| eyeBlink L/R | the `blink` argument (procedural blinks with human statistics, see `signals`) |
| browInnerUp | inner brow ends (21, 22) higher above the eye line |
| browOuterUp L/R | outer brow ends (26 left, 17 right) higher above the eye line |
| browDown L/R | brow middles (24 left, 19 right) lower towards the eye line |

"Left" is the subject's own left (ARKit's convention): image right for an unmirrored camera view.

**Calibration.** The spans (`SPANS`) are the 95th percentile of each feature's positive deviation from the
clip's neutral face over the real speakers of `../shared/data` (1,245 clips, 75.6 min; the neutral face of a
clip is its frame with the smallest inner-lip gap among the frames within 10 % of its median mouth width), so a
weight of 1 is a strong but real movement of a real speaker. `benchmarks/blendshape_calibration.py`
recomputes them and writes the table to `benchmarks/results/blendshape_calibration.{json,md}`. Generated faces
move less than real ones; `gain` scales every span down (weights up) for a livelier rig.
"""

from __future__ import annotations

import numpy as np

ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
ARKIT_INDEX: dict[str, int] = {name: i for i, name in enumerate(ARKIT_NAMES)}

#: The features measured per frame (face frame, / inter-ocular distance); see `face_features`.
FEATURES: tuple[str, ...] = (
    "gap", "chin_drop", "width", "corner_out_l", "corner_out_r", "corner_up_l", "corner_up_r", "lip_thick_l",
    "lip_thick_r", "upper_thick", "lower_thick", "upper_lip_up_l", "upper_lip_up_r", "lower_lip_down_l",
    "lower_lip_down_r", "mouth_x", "jaw_x", "brow_inner", "brow_outer_l", "brow_outer_r", "brow_mid_l", "brow_mid_r",
)
_F = {name: i for i, name in enumerate(FEATURES)}

#: Full-scale deviation of each feature (inter-ocular units), measured on real speakers (module docstring).
#: Keys are "<feature>+" (increase) or "<feature>-" (decrease).
SPANS: dict[str, float] = {
    "gap+": 0.132, "chin_drop+": 0.143, "width-": 0.058, "width+": 0.061, "corner_out_l+": 0.031,
    "corner_out_r+": 0.031, "corner_up_l+": 0.043, "corner_up_r+": 0.046, "corner_up_l-": 0.024,
    "corner_up_r-": 0.021, "lip_thick_l-": 0.036, "lip_thick_r-": 0.036, "upper_thick-": 0.029,
    "lower_thick-": 0.017, "upper_lip_up_l-": 0.037, "upper_lip_up_r-": 0.039, "lower_lip_down_l+": 0.130,
    "lower_lip_down_r+": 0.129, "mouth_x+": 0.043, "mouth_x-": 0.029, "jaw_x+": 0.050, "jaw_x-": 0.045,
    "brow_inner+": 0.061, "brow_outer_l+": 0.048, "brow_outer_r+": 0.052, "brow_mid_l-": 0.033,
    "brow_mid_r-": 0.033,
}

_R_EYE = np.arange(36, 42)
_L_EYE = np.arange(42, 48)


def face_frame(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) image landmarks -> (..., 68, 2) in the face frame (module docstring): origin between the eye
    centres, x from the subject's right eye to its left eye, unit = inter-ocular distance |p36 - p45|."""
    p = np.asarray(landmarks, dtype=np.float64)
    if p.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape (..., 68, 2), got {p.shape}")
    right = p[..., _R_EYE, :].mean(axis=-2)
    left = p[..., _L_EYE, :].mean(axis=-2)
    origin = 0.5 * (right + left)
    axis = left - right
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
    iod = np.maximum(np.linalg.norm(p[..., 36, :] - p[..., 45, :], axis=-1), 1e-9)
    rel = p - origin[..., None, :]
    x = (rel * axis[..., None, :]).sum(-1)
    y = rel[..., 0] * -axis[..., None, 1] + rel[..., 1] * axis[..., None, 0]  # axis rotated +90 degrees
    return np.stack([x, y], axis=-1) / iod[..., None, None]


def face_features(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) landmarks -> (..., len(FEATURES)) measurements in the face frame (inter-ocular units)."""
    f = face_frame(landmarks)
    x, y = f[..., 0], f[..., 1]

    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(f[..., a, :] - f[..., b, :], axis=-1)

    centre_x = 0.5 * (x[..., 48] + x[..., 54])
    centre_y = 0.5 * (y[..., 51] + y[..., 57])
    out = [
        (dist(61, 67) + dist(62, 66) + dist(63, 65)) / 3.0,           # gap
        y[..., 8] - y[..., 33],                                       # chin_drop
        dist(48, 54),                                                 # width
        x[..., 54] - centre_x,                                        # corner_out_l
        centre_x - x[..., 48],                                        # corner_out_r
        centre_y - y[..., 54],                                        # corner_up_l (up = smaller y)
        centre_y - y[..., 48],                                        # corner_up_r
        dist(52, 63) + dist(56, 65),                                  # lip_thick_l
        dist(50, 61) + dist(58, 67),                                  # lip_thick_r
        dist(51, 62),                                                 # upper_thick
        dist(57, 66),                                                 # lower_thick
        y[..., 52] - y[..., 33],                                      # upper_lip_up_l (smaller = raised)
        y[..., 50] - y[..., 33],                                      # upper_lip_up_r
        y[..., 56] - y[..., 33],                                      # lower_lip_down_l
        y[..., 58] - y[..., 33],                                      # lower_lip_down_r
        centre_x - 0.5 * (x[..., 27] + x[..., 33]),                   # mouth_x (+ = towards the subject's left)
        x[..., 8] - x[..., 27],                                       # jaw_x
        -0.5 * (y[..., 21] + y[..., 22]),                             # brow_inner (height above the eye line)
        -y[..., 26],                                                  # brow_outer_l
        -y[..., 17],                                                  # brow_outer_r
        -y[..., 24],                                                  # brow_mid_l
        -y[..., 19],                                                  # brow_mid_r
    ]
    return np.stack(out, axis=-1)


def _w(dev: np.ndarray, key: str, gain: float) -> np.ndarray:
    sign = 1.0 if key.endswith("+") else -1.0
    return np.clip(sign * dev[..., _F[key[:-1]]] * gain / SPANS[key], 0.0, 1.0)


def arkit_blendshapes(landmarks: np.ndarray, neutral: np.ndarray, blink: np.ndarray | float = 0.0,
                      gain: float = 1.0) -> np.ndarray:
    """ARKit-52 weights of landmark frames against a neutral face (mapping and calibration: module docstring).

    Args:
        landmarks: (..., 68, 2) landmarks, any consistent units (normalised crop or pixels).
        neutral: (68, 2) the stream's neutral face, or (..., 68, 2) one per frame/stream.
        blink: eye closure in [0, 1], scalar or broadcastable to the leading shape (-> eyeBlinkLeft/Right).
        gain: > 1 makes every shape reach full weight with a smaller movement.
    Returns:
        (..., 52) float32 in `ARKIT_NAMES` order, each in [0, 1].
    Raises:
        ValueError: wrong shapes, or gain <= 0.
    """
    return blendshapes_from_features(face_features(landmarks), face_features(neutral), blink, gain)


def blendshapes_from_features(feats: np.ndarray, neutral_feats: np.ndarray, blink: np.ndarray | float = 0.0,
                              gain: float = 1.0) -> np.ndarray:
    """`arkit_blendshapes` on precomputed `face_features` (..., F) against neutral features (F,) or (..., F);
    lets a caller keep a running neutral (see `signals.SignalExtractor`)."""
    if gain <= 0:
        raise ValueError("gain must be positive")
    dev = feats - neutral_feats
    out = np.zeros(feats.shape[:-1] + (len(ARKIT_NAMES),), dtype=np.float64)

    def put(name: str, value: np.ndarray) -> None:
        out[..., ARKIT_INDEX[name]] = value

    jaw = _w(dev, "gap+", gain)
    put("jawOpen", jaw)
    put("mouthClose", np.clip(_w(dev, "chin_drop+", gain) - jaw, 0.0, 1.0))
    narrow = _w(dev, "width-", gain)
    put("mouthFunnel", narrow * jaw)
    put("mouthPucker", narrow * (1.0 - jaw))
    closed = 1.0 - jaw
    for side, s in (("Left", "l"), ("Right", "r")):
        put(f"mouthStretch{side}", _w(dev, f"corner_out_{s}+", gain) * (1.0 - _w(dev, f"corner_up_{s}+", gain)))
        put(f"mouthSmile{side}", _w(dev, f"corner_up_{s}+", gain))
        put(f"mouthFrown{side}", _w(dev, f"corner_up_{s}-", gain))
        put(f"mouthPress{side}", _w(dev, f"lip_thick_{s}-", gain) * closed)
        put(f"mouthUpperUp{side}", _w(dev, f"upper_lip_up_{s}-", gain))
        put(f"mouthLowerDown{side}", _w(dev, f"lower_lip_down_{s}+", gain))
        put(f"browOuterUp{side}", _w(dev, f"brow_outer_{s}+", gain))
        put(f"browDown{side}", _w(dev, f"brow_mid_{s}-", gain))
    put("mouthRollUpper", _w(dev, "upper_thick-", gain))
    put("mouthRollLower", _w(dev, "lower_thick-", gain))
    put("mouthLeft", _w(dev, "mouth_x+", gain))
    put("mouthRight", _w(dev, "mouth_x-", gain))
    put("jawLeft", _w(dev, "jaw_x+", gain))
    put("jawRight", _w(dev, "jaw_x-", gain))
    put("browInnerUp", _w(dev, "brow_inner+", gain))
    b = np.clip(np.broadcast_to(np.asarray(blink, dtype=np.float64), feats.shape[:-1]), 0.0, 1.0)
    put("eyeBlinkLeft", b)
    put("eyeBlinkRight", b)
    return out.astype(np.float32)


#: The shapes `arkit_blendshapes` can make non-zero (the others are always 0).
SUPPORTED: tuple[str, ...] = tuple(n for n in ARKIT_NAMES if n in {
    "eyeBlinkLeft", "eyeBlinkRight", "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker",
    "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthPressLeft",
    "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight"})


def as_dict(weights: np.ndarray, names: tuple[str, ...] = SUPPORTED) -> dict[str, float]:
    """(52,) weights -> {name: float} for `names` (default: the shapes 68 points support)."""
    w = np.asarray(weights).reshape(-1)
    return {n: float(w[ARKIT_INDEX[n]]) for n in names}
