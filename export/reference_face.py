"""The default identity written into every exported model (`msync.reference_face`).

Resolution order (:func:`resolve_reference_face`): a face given by the caller, then a face the checkpoint
carries (meta key "reference_face" or "mean_face", or a generator buffer of that name), then the shipped
neutral face `export/data/neutral_face_ibug68.json`.

The shipped face is the mean of the training split's landmarks in the model's own coordinates: every clip
normalised by its fixed crop (`stream_engine.landmarks.fixed_crop`, the crop training uses), averaged over its
valid frames, then averaged over clips. Regenerate it with ``python -m export.reference_face DATA_DIR``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

NEUTRAL_FACE_PATH = Path(__file__).with_name("data") / "neutral_face_ibug68.json"


def neutral_face() -> np.ndarray:
    """(68, 2) float32 shipped neutral face, fixed-crop coordinates in [0, 1]."""
    data = json.loads(NEUTRAL_FACE_PATH.read_text())
    face = np.asarray(data["landmarks"], dtype=np.float32)
    if face.shape != (68, 2):
        raise ValueError(f"{NEUTRAL_FACE_PATH}: expected 68x2 landmarks, got {face.shape}")
    return face


def resolve_reference_face(face=None, meta: dict | None = None, module=None) -> tuple[np.ndarray, str]:
    """Pick the default identity. Returns ((68, 2) float32, where it came from)."""
    if face is not None:
        return np.asarray(face, dtype=np.float32).reshape(68, 2), "given"
    for key in ("reference_face", "mean_face"):
        if meta and meta.get(key) is not None:
            return np.asarray(meta[key], dtype=np.float32).reshape(68, 2), f"checkpoint meta {key!r}"
        buf = getattr(module, key, None) if module is not None else None
        if buf is not None and hasattr(buf, "detach"):
            return buf.detach().cpu().numpy().astype(np.float32).reshape(68, 2), f"generator buffer {key!r}"
    return neutral_face(), f"shipped neutral face ({NEUTRAL_FACE_PATH.name})"


def compute_neutral_face(data_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """Mean fixed-crop face over the training split of a dataset. Returns ((68, 2) float64, clip ids)."""
    from stream_engine.landmarks import fixed_crop
    from training.data.manifest import assign_identities, read_manifest
    from training.data.splits import assign_splits

    records = assign_splits(assign_identities(read_manifest(data_dir)))["train"]
    faces, used = [], []
    for r in records:
        if not Path(r.landmarks_path).is_file():
            continue
        pts = np.load(r.landmarks_path).astype(np.float64)
        valid = np.all(np.isfinite(pts), axis=(1, 2))
        if valid.sum() < 25:
            continue
        norm = fixed_crop(pts[valid]).normalise(pts[valid]).astype(np.float64)
        faces.append(norm.mean(axis=0))
        used.append(r.id)
    if not faces:
        raise FileNotFoundError(f"{data_dir}: no training clip with landmarks")
    return np.mean(faces, axis=0), used


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    data_dir = Path(argv[0] if argv else "../shared/data")
    face, used = compute_neutral_face(data_dir)
    NEUTRAL_FACE_PATH.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps(
        {
            "description": "mean fixed-crop face (stream_engine.landmarks.fixed_crop, default CropConfig) over the "
            "training split; iBUG 68 order; x right, y down, [0, 1]",
            "num_clips": len(used),
            "recipe": "python -m export.reference_face DATA_DIR",
        },
        indent=1,
    )[:-2]
    rows = ",\n  ".join(f"[{float(x):.5f}, {float(y):.5f}]" for x, y in face)
    NEUTRAL_FACE_PATH.write_text(f'{head},\n "landmarks": [\n  {rows}\n ]\n}}\n')
    print(f"wrote {NEUTRAL_FACE_PATH} from {len(used)} clips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
