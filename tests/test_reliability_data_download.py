"""Leftovers of killed downloads: stale `.part` files of the same archive are removed, fresh and foreign ones kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from relssl.data import DataError
from relssl.data.download import STALE_AFTER_S, Archive, download


def test_stale_part_files_of_the_same_archive_are_removed(tmp_path: Path, leftover) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(b"x" * 10_000)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    stale = leftover(dest.parent, ".blob.bin.k1ll3d_a.part", STALE_AFTER_S + 60)
    fresh = leftover(dest.parent, ".blob.bin.running.part", 10)  # perhaps a second download in progress
    other = leftover(dest.parent, ".other.bin.k1ll3d_b.part", STALE_AFTER_S + 60)  # another archive's
    similar = leftover(dest.parent, ".blob.bin.old.tmp", STALE_AFTER_S + 60)  # not a download's name
    download(Archive(source.as_uri(), "blob.bin", md5=hashlib.md5(source.read_bytes()).hexdigest()), dest,
             progress=False)
    assert dest.read_bytes() == source.read_bytes()
    assert not stale.exists() and fresh.exists() and other.exists() and similar.exists()


def test_stale_part_files_are_removed_even_when_the_download_fails(tmp_path: Path, leftover) -> None:
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    stale = leftover(dest.parent, ".blob.bin.k1ll3d_c.part", STALE_AFTER_S * 3)
    with pytest.raises(DataError, match="cannot download"):
        download(Archive((tmp_path / "missing.bin").as_uri(), "blob.bin", md5="0" * 32), dest, progress=False)
    assert not stale.exists() and sorted(p.name for p in dest.parent.iterdir()) == []

