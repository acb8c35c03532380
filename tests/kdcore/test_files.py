"""Tests for kdcore.files: atomic_write."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.files import atomic_write


def test_atomic_write_replaces_the_file_only_at_the_end(tmp_path: Path) -> None:
    final = tmp_path / "report.json"
    final.write_text("old")
    with atomic_write(final) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".report.")
        assert tmp.suffix == ".json"  # writers such as torch.export.save check the suffix
        tmp.write_text("new")
        assert final.read_text() == "old"  # not yet
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_write_temporary_names_are_unique(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a.pt") as first, atomic_write(tmp_path / "a.pt") as second:
        assert first != second
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert (tmp_path / "a.pt").read_bytes() == b"1"  # the last to finish wins


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path,
) -> None:
    final = tmp_path / "ckpt.pt"
    final.write_bytes(b"old")

    def fail() -> None:
        with atomic_write(str(final)) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        fail()
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
