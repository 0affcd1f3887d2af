"""Face detection, tracking and 68-point landmark fitting with dlib.

Same models as `../shared/data`: dlib's HOG frontal face detector and the iBUG 68-point shape predictor
shipped by the `face-recognition-models` package. Measured against the stored landmarks of the 25 fps GRID
clips, running both on the RGB frame with upsample 0 reproduces them to the pixel; grayscale input or
upsample 1 move every point by about 0.5 px, so RGB/upsample 0 is the default.

Points are (x, y) in pixels of the frame they were fitted on, x to the right, y downwards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


class FaceError(ValueError):
    """No usable face: none detected, or an unreadable image."""


def predictor_path() -> Path:
    """Location of dlib's 68-point predictor weights from the `face-recognition-models` package.

    The package's own `pose_predictor_model_location()` imports `pkg_resources`, which setuptools >= 81 no
    longer ships; the file is found next to the package instead when that import fails.
    """
    try:
        import face_recognition_models

        return Path(face_recognition_models.pose_predictor_model_location())
    except ImportError:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "face-recognition-models is not installed (pip install face-recognition-models)"
            ) from None
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE
        if not path.is_file():
            raise ImportError(f"{path}: the 68-point predictor file is missing from face-recognition-models") from None
        return path


@dataclasses.dataclass(frozen=True)
class Box:
    """A face box in pixels, dlib's convention: inclusive corners (right - left + 1 = width)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1


# Points that move with the head but not with speech (brows, nose, eyes): the tracked box follows them.
RIGID_POINTS = np.r_[17:48]


@dataclasses.dataclass(frozen=True)
class BoxAnchor:
    """A detector box and where the rigid landmarks were in that frame, to place a box on a later frame
    without running the detector.

    The predictor's output depends on the box it is given, so a tracked box should be the box the detector
    would have drawn. The detector's boxes come in a few fixed sizes and stay put while the head is still, so
    the box is the last detected one moved by the rigid points' displacement (rounded to whole pixels: a
    still face keeps exactly the detector's box) and rescaled only when the face grew or shrank noticeably.
    """

    box: Box
    centre_xy: tuple[float, float]  # mean of RIGID_POINTS, pixels
    size_px: float  # RMS distance of RIGID_POINTS to their mean

    @staticmethod
    def measure(box: Box, points: np.ndarray) -> BoxAnchor:
        centre, size = _rigid_frame(points)
        return BoxAnchor(box, (float(centre[0]), float(centre[1])), size)

    def place(self, points: np.ndarray, rescale_above: float = 0.04) -> Box:
        """The box for a frame whose previous frame had `points` ((68, 2) pixels)."""
        centre, size = _rigid_frame(points)
        dx = int(round(centre[0] - self.centre_xy[0]))
        dy = int(round(centre[1] - self.centre_xy[1]))
        b = self.box
        ratio = size / self.size_px if self.size_px > 0 else 1.0
        if abs(ratio - 1.0) <= rescale_above:
            return Box(b.left + dx, b.top + dy, b.right + dx, b.bottom + dy)
        cx, cy = (b.left + b.right) / 2.0 + dx, (b.top + b.bottom) / 2.0 + dy
        half_w, half_h = ratio * (b.width - 1) / 2.0, ratio * (b.height - 1) / 2.0
        return Box(int(round(cx - half_w)), int(round(cy - half_h)), int(round(cx + half_w)), int(round(cy + half_h)))


def _rigid_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    rigid = np.asarray(points, dtype=np.float64)[RIGID_POINTS]
    centre = rigid.mean(axis=0)
    return centre, float(np.sqrt(((rigid - centre) ** 2).sum(axis=1).mean()))


class FaceLandmarker:
    """dlib's detector and 68-point predictor (loaded once: the predictor is a 100 MB file, ~1 s to read).

    Args:
        upsample: detector pyramid upsampling. 0 finds faces down to about 80 px wide and reproduces the
            stored landmarks; 1 finds faces down to 40 px at about 4x the cost.
        model_path: the predictor weights (default: :func:`predictor_path`).
    """

    def __init__(self, upsample: int = 0, model_path: str | Path | None = None):
        import dlib

        self._dlib = dlib
        self.upsample = int(upsample)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model_path or predictor_path()))

    def detect(self, image: np.ndarray, upsample: int | None = None) -> Box | None:
        """Largest face in an (H, W, 3) uint8 RGB or (H, W) uint8 gray image, or None.

        `upsample` overrides the instance's setting for this call.
        """
        rects = self._detector(_contiguous(image), self.upsample if upsample is None else int(upsample))
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        return Box(r.left(), r.top(), r.right(), r.bottom())

    def fit(self, image: np.ndarray, box: Box) -> np.ndarray:
        """68 points fitted inside `box`: (68, 2) float32 pixels (dlib's points are whole pixels)."""
        rect = self._dlib.rectangle(box.left, box.top, box.right, box.bottom)
        shape = self._predictor(_contiguous(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def landmarks(self, image: np.ndarray, prev_box: Box | None = None) -> tuple[np.ndarray | None, Box | None, bool]:
        """Detect-every-frame step, the rule the stored data was made with.

        Returns:
            (points, box, detected): points (68, 2) float32 pixels or None; the box they were fitted in;
            detected True when the detector found the face in this very image. When it finds none, the points
            are fitted inside `prev_box` (detected False), or are None without a previous box.
        """
        box = self.detect(image)
        if box is not None:
            return self.fit(image, box), box, True
        if prev_box is not None:
            return self.fit(image, prev_box), prev_box, False
        return None, None, False


@dataclasses.dataclass(frozen=True)
class TrackConfig:
    """When to run the detector.

    Attributes:
        detect_every: run the detector at least every this many frames; 1 = every frame (the rule the stored
            data was made with). In between, the landmarks are fitted in the last detector box moved with the
            previous frame's landmarks (:class:`BoxAnchor`), about 1 ms a frame instead of 6-35 ms.
        min_similarity: a tracked frame is kept when the face patch under its box still correlates with the
            patch at the last detection by at least this much (normalised cross-correlation of 24x24 gray
            samples); otherwise the detector runs on that frame. The shape predictor always returns a face
            shape, even on a blank frame, so this check is what catches a lost face. Measured on the raw clips
            over 9-frame tracks: 0.48 minimum (a fast-moving speaker), 0.95-0.99 typically; a blank, noisy,
            shifted or background patch or another person: -0.05 to 0.2.
        patch_px: side of the sampled patch.
    """

    detect_every: int = 1
    min_similarity: float = 0.4
    patch_px: int = 24


class FaceTracker:
    """Per-clip state for detection and tracking: last box, last landmarks, the appearance template.

    `step(image)` returns (points (68, 2) float32 pixels or None, detected). `detected` is True when the face
    was confirmed in that very frame, by the detector or by a track that passed the appearance check; False
    when the detector found nothing and the points were fitted in the previous frame's box (the meaning of the
    stored `det.npy`), or when there is no face yet (points None).
    """

    def __init__(self, landmarker: FaceLandmarker, cfg: TrackConfig = TrackConfig()):
        if cfg.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {cfg.detect_every}")
        self.landmarker = landmarker
        self.cfg = cfg
        self._box: Box | None = None  # box of the last fit (the stale-box fallback)
        self._points: np.ndarray | None = None  # last confirmed landmarks (None: nothing to track from)
        self._anchor: BoxAnchor | None = None
        self._template: np.ndarray | None = None  # normalised face patch at the last detection
        self._since_detect = 0
        self.num_detector_calls = 0
        self.num_tracked_frames = 0

    def step(self, image: np.ndarray) -> tuple[np.ndarray | None, bool]:
        lm = self.landmarker
        image = _contiguous(image)
        if (
            self.cfg.detect_every > 1
            and self._points is not None
            and self._anchor is not None
            and self._since_detect < self.cfg.detect_every
        ):
            box = self._anchor.place(self._points)
            similarity = float((_patch(image, box, self.cfg.patch_px) * self._template).sum())
            if similarity >= self.cfg.min_similarity:
                fitted = lm.fit(image, box)
                self._since_detect += 1
                self.num_tracked_frames += 1
                self._box, self._points = box, fitted
                return fitted, True
        self.num_detector_calls += 1
        points, found, detected = lm.landmarks(image, self._box)
        if detected and found is not None and points is not None:
            box = found
            self._anchor = BoxAnchor.measure(box, points)
            self._template = _patch(image, box, self.cfg.patch_px)
            self._since_detect = 1
            self._box, self._points = box, points
        else:
            # Keep the stale box for the next fallback (the reference rule) but never track from unconfirmed
            # points: the next frame goes to the detector again.
            self._points = None
        return points, detected


def _patch(image: np.ndarray, box: Box, side: int) -> np.ndarray:
    """(side, side) gray samples of `box` (nearest pixel, clipped at the border), zero-mean, unit norm."""
    h, w = image.shape[:2]
    ys = np.clip(np.linspace(box.top, box.bottom, side).round().astype(np.intp), 0, h - 1)
    xs = np.clip(np.linspace(box.left, box.right, side).round().astype(np.intp), 0, w - 1)
    p = image[ys[:, None], xs[None, :]].astype(np.float32)
    if p.ndim == 3:
        p = p.mean(axis=2)
    p -= p.mean()
    norm = float(np.linalg.norm(p))
    # A flat patch (blank frame) has no structure to match: similarity 0.
    return p / norm if norm > 1e-6 else np.zeros_like(p)


def _contiguous(image: np.ndarray) -> np.ndarray:
    # dlib reads numpy buffers as if they were C-contiguous: a strided view gives wrong results, silently.
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise FaceError(f"expected (H, W) or (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def landmarks_from_image(path: str | Path, landmarker: FaceLandmarker | None = None) -> np.ndarray:
    """68 points of the largest face in a still image (a reference face).

    Args:
        path: any image PyAV/FFmpeg can decode (png, jpg, bmp, webp ...).
        landmarker: reuse a loaded one (loading the predictor takes about a second).
    Returns:
        (68, 2) float32 pixels of the image.
    Raises:
        FaceError: missing or unreadable file, or no face found (also retried with upsample 1 for small faces).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FaceError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            image = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
    except Exception as exc:
        raise FaceError(f"{path}: cannot read image ({exc})") from exc
    landmarker = landmarker or FaceLandmarker()
    box = landmarker.detect(image)
    if box is None and landmarker.upsample == 0:
        box = landmarker.detect(image, upsample=1)  # a small face in a large photo
    if box is None:
        raise FaceError(f"{path}: no face found")
    return landmarker.fit(image, box)
