"""Reading a dataset manifest (the `../shared/data` layout, which `msync data prepare` also writes).

A dataset directory holds `manifest.tsv` (one row per clip, tab-separated, header first) and
`clips/<id>.flac` (16 kHz mono), `clips/<id>.lm68.npy` ((T, 68, 2) float32 pixel landmarks at 25 fps, NaN
rows where no face was found) and optionally `clips/<id>.det.npy` ((T,) bool, True where detected).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

REQUIRED_COLUMNS = ("id", "speaker")


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One manifest row. `identity` is filled by :func:`assign_identities`."""

    id: str
    speaker: str
    face_cluster: str
    group: str
    duration_s: float
    audio_path: Path
    landmarks_path: Path
    detected_path: Path | None
    row: dict
    identity: str = ""


def read_manifest(data_dir: str | Path) -> list[ClipRecord]:
    """Parse `data_dir/manifest.tsv`.

    Raises:
        FileNotFoundError: no manifest.
        ValueError: a required column is missing.
    """
    data_dir = Path(data_dir)
    path = data_dir / "manifest.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (is this a dataset directory?)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        rows = list(reader)
    clips_dir = data_dir / "clips"
    records = []
    for row in rows:
        cid = row["id"]
        det = clips_dir / f"{cid}.det.npy"
        records.append(
            ClipRecord(
                id=cid,
                speaker=row.get("speaker", "") or "",
                face_cluster=row.get("face_cluster", "") or "",
                group=row.get("group", "") or "",
                duration_s=float(row.get("duration_s") or 0.0),
                audio_path=clips_dir / f"{cid}.flac",
                landmarks_path=clips_dir / f"{cid}.lm68.npy",
                detected_path=det if det.is_file() else None,
                row=row,
            )
        )
    return assign_identities(records)


def _speaker_name(speaker: str) -> str | None:
    name = re.sub(r"\s*\(by face match\)\s*$", "", speaker.strip())
    if not name or name.lower().startswith("unknown"):
        return None
    return name


def assign_identities(records: list[ClipRecord]) -> list[ClipRecord]:
    """Give every clip an identity key so that one person never straddles two splits.

    Clips are joined when they share a known speaker name or an automatic face cluster (union-find), because
    the manifest names some people in one row and only clusters them in another.
    """
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    keys = []
    for r in records:
        k = [f"clip:{r.id}"]
        name = _speaker_name(r.speaker)
        if name:
            k.append(f"speaker:{name}")
        if r.face_cluster:
            k.append(f"cluster:{r.face_cluster}")
        for other in k[1:]:
            union(k[0], other)
        keys.append(k[0])
    # Name each identity after its alphabetically first speaker/cluster key (stable across runs).
    members: dict[str, list[str]] = {}
    for node in list(parent):
        members.setdefault(find(node), []).append(node)
    label = {}
    for root, nodes in members.items():
        named = sorted(n for n in nodes if not n.startswith("clip:"))
        label[root] = named[0] if named else sorted(nodes)[0]
    return [dataclasses.replace(r, identity=label[find(k)]) for r, k in zip(records, keys)]
