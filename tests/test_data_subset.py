"""benchmarks.data_subset: a real subset within its budget, validation clips first, no test clips, the source's
manifest rows (so the splits stay the same)."""

from __future__ import annotations

from benchmarks import data_subset
from training.data.manifest import read_manifest
from training.data.splits import assign_splits


def test_subset_fits_the_budget_and_keeps_the_splits(shared_data, tmp_path):
    out = tmp_path / "sub"
    assert data_subset.main(["--data", str(shared_data), "--out", str(out), "--mb", "3"]) == 0
    size = sum(f.stat().st_size for f in (out / "clips").iterdir())
    assert 0 < size <= 3e6
    full = assign_splits(read_manifest(shared_data))
    sub = assign_splits(read_manifest(out))
    ids = {r.id for recs in sub.values() for r in recs}
    assert {r.id for r in full["val"]} <= ids, "validation clips come first"
    assert not sub["test"] and not ids & {r.id for r in full["test"]}
    assert {r.id for r in sub["train"]} <= {r.id for r in full["train"]}
    for cid in ids:
        assert (out / "clips" / f"{cid}.flac").is_file() and (out / "clips" / f"{cid}.lm68.npy").is_file()


def test_missing_manifest_is_a_clear_error(tmp_path, capsys):
    assert data_subset.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "manifest.tsv not found" in capsys.readouterr().err
