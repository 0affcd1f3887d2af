"""The 68-point iBUG landmark layout and the fixed-crop coordinate frame.

Coordinates follow the paper: one fixed square crop per sequence (never re-centred per frame), mapped to
[0, 1], so head translation and rotation stay in the data. x grows to the right, y downwards (image axes).
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_LANDMARKS = 68

# 0-based iBUG index ranges (end exclusive).
JAW = range(0, 17)
BROWS = range(17, 27)
NOSE = range(27, 36)
RIGHT_EYE = range(36, 42)  # the subject's right eye, on the image's left
LEFT_EYE = range(42, 48)
OUTER_LIP = range(48, 60)
INNER_LIP = range(60, 68)
MOUTH = range(48, 68)

GROUPS = {
    "jaw": JAW,
    "brows": BROWS,
    "nose": NOSE,
    "right_eye": RIGHT_EYE,
    "left_eye": LEFT_EYE,
    "outer_lip": OUTER_LIP,
    "inner_lip": INNER_LIP,
}

# Lines drawn by viewers and renders: (start, end) index pairs of connected points.
CONTOURS: tuple[tuple[int, ...], ...] = (
    tuple(JAW),
    tuple(range(17, 22)),
    tuple(range(22, 27)),
    tuple(range(27, 31)),
    tuple(range(31, 36)),
    tuple(RIGHT_EYE) + (36,),
    tuple(LEFT_EYE) + (42,),
    tuple(OUTER_LIP) + (48,),
    tuple(INNER_LIP) + (60,),
)


def _mirror_permutation() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip
    perm = np.arange(NUM_LANDMARKS)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


#: MIRROR_PERMUTATION[i] is the index that point i becomes after a horizontal flip.
MIRROR_PERMUTATION = _mirror_permutation()


def mirror(points: np.ndarray) -> np.ndarray:
    """Horizontal flip in normalised coordinates: x -> 1 - x, with left/right indices swapped.

    Args:
        points: (..., 68, 2) normalised landmarks.
    """
    out: np.ndarray = points[..., MIRROR_PERMUTATION, :].copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """How the fixed crop is chosen from a sequence of pixel landmarks.

    The crop is square, centred on the median face centre, with side `scale` times the median face size
    (the larger side of the landmarks' bounding box), so a face fills about 1/scale of the crop.
    """

    scale: float = 2.0


@dataclasses.dataclass(frozen=True)
class Crop:
    """A fixed square crop in pixels: normalised = (pixels - origin) / side_px."""

    origin_x_px: float
    origin_y_px: float
    side_px: float

    def normalise(self, points_px: np.ndarray) -> np.ndarray:
        """(..., 68, 2) pixels -> (..., 68, 2) float32 normalised coordinates."""
        origin = np.array([self.origin_x_px, self.origin_y_px], dtype=np.float64)
        return ((points_px - origin) / self.side_px).astype(np.float32)

    def denormalise(self, points: np.ndarray) -> np.ndarray:
        origin = np.array([self.origin_x_px, self.origin_y_px], dtype=np.float64)
        return points.astype(np.float64) * self.side_px + origin


#: A face with any coordinate above this is in pixels, not in normalised crop coordinates (about 0..1).
PIXEL_COORDINATE_ABOVE = 1.5


def crop_coordinates(points: np.ndarray) -> np.ndarray:
    """(68, 2) finite landmarks -> float32 normalised crop coordinates: as given, or, when any coordinate is above
    `PIXEL_COORDINATE_ABOVE` (pixels), normalised with the training data's fixed-crop rule (`fixed_crop`).

    Raises:
        ValueError: pixels that `fixed_crop` cannot frame.
    """
    pts = np.asarray(points, dtype=np.float64)
    if np.abs(pts).max() > PIXEL_COORDINATE_ABOVE:
        return fixed_crop(pts).normalise(pts)
    return pts.astype(np.float32)


def fixed_crop(points_px: np.ndarray, cfg: CropConfig = CropConfig()) -> Crop:
    """Choose one crop for a whole sequence (or a single face) of pixel landmarks.

    Args:
        points_px: (T, 68, 2) or (68, 2) pixel landmarks; rows with NaN (missed detections) are ignored.
    Raises:
        ValueError: no frame has a valid face.
    """
    pts = np.asarray(points_px, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    valid = np.all(np.isfinite(pts), axis=(1, 2))
    if not valid.any():
        raise ValueError("no valid landmarks to choose a crop from")
    pts = pts[valid]
    lo, hi = pts.min(axis=1), pts.max(axis=1)  # (T, 2)
    centre = np.median((lo + hi) / 2.0, axis=0)
    size = float(np.median(np.max(hi - lo, axis=1)))
    if not size > 0:
        raise ValueError("degenerate landmarks: zero face size")
    side = size * cfg.scale
    return Crop(float(centre[0] - side / 2), float(centre[1] - side / 2), side)


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap ‖p62 − p66‖ for (..., 68, 2) landmarks -> (...)."""
    out: np.ndarray = np.linalg.norm(points[..., 62, :] - points[..., 66, :], axis=-1)
    return out


def interocular(points: np.ndarray) -> np.ndarray:
    """Outer eye-corner distance ‖p36 − p45‖, a rigid face scale -> (...)."""
    out: np.ndarray = np.linalg.norm(points[..., 36, :] - points[..., 45, :], axis=-1)
    return out
