"""Faults of the decode cache: disk full while writing, altered caches and sources, leftovers of killed writes."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from relssl.data import DataConfig, DataError, load_split
from relssl.errors import RelsslWarning

HOUR = 3600.0


@pytest.fixture
def make_folder(png):
    """`make_folder(root, n=3)`: two classes of `n` 4x4 PNGs in train/, one in test/."""

    def make(root: Path, n: int = 3) -> None:
        for c in ("a", "b"):
            for i in range(n):
                png(root / "train" / c / f"{i}.png", 10 * (c == "b") + i, size=(4, 4))
        png(root / "test" / "a" / "0.png", 99, size=(4, 4))

    return make


def load(root: Path, split: str = "train", **kw):
    return load_split("imagefolder", split, root, download=False, progress=False, **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def npy_bytes(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return len(buffer.getvalue())


def touch_source(root: Path) -> None:
    """Give one source file a new mtime, so the cache key changes and the next load rebuilds."""
    os.utime(root / "train" / "a" / "0.png", ns=(1_000_000_000, 1_000_000_000))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- disk full ------------------------------------------------------------------------------------------------


def test_disk_full_while_reserving_is_one_line_and_keeps_the_previous_cache(
    tmp_path: Path, make_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    make_folder(root)
    load(root, cache_dir=cache_dir)
    load(root, "test", cache_dir=cache_dir)
    folder = cache_dir / "imagefolder_train"
    before, other = snapshot(folder), snapshot(cache_dir / "imagefolder_test")
    touch_source(root)
    monkeypatch.setattr(os, "posix_fallocate", enospc)
    with pytest.raises(DataError) as info:
        load(root, cache_dir=cache_dir)
    message = str(info.value)
    needed = npy_bytes(np.zeros((6, 4, 4, 3), np.uint8)) + npy_bytes(np.zeros(6, np.int64))
    assert "\n" not in message and str(folder) in message and f"{needed} bytes" in message
    assert "free" in message and "data.cache_dir" in message
    assert snapshot(folder) == before  # no temporary files, the previous cache untouched
    assert snapshot(cache_dir / "imagefolder_test") == other


def test_disk_full_during_plain_writes_when_reserving_is_unsupported(
    tmp_path: Path, make_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relssl.data import cache

    make_folder(tmp_path)

    def unsupported(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    writes: list[int] = []

    def write_then_full(handle, data) -> None:
        writes.append(len(data))
        if len(writes) > 1:  # the header gets out, the pixels do not
            enospc()
        handle.write(data)

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    monkeypatch.setattr(cache, "_write_block", write_then_full)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DataError, match=r"^no space left .*\.relssl_cache.*bytes.*data\.cache_dir") as info:
        load(tmp_path)
    assert "\n" not in str(info.value) and len(writes) >= 2
    for base in (tmp_path / ".relssl_cache", tmp_path / "xdg"):  # both default places were tried, none has leftovers
        assert [p.name for p in base.rglob("*") if p.is_file()] == []


def test_disk_full_in_the_local_cache_falls_back_to_the_user_cache(
    tmp_path: Path, make_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    make_folder(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = os.posix_fallocate
    local = str(root / ".relssl_cache")

    def full_locally(fd: int, offset: int, length: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(local):
            enospc()
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", full_locally)
    with pytest.warns(RelsslWarning, match=r"no space .*\.relssl_cache.*stored in .*xdg"):
        first = load(root)
    assert [p for p in (root / ".relssl_cache").rglob("*") if p.is_file()] == []
    assert len(list((tmp_path / "xdg").rglob("meta.json"))) == 1
    monkeypatch.setattr(os, "posix_fallocate", real)
    np.testing.assert_array_equal(load(root).images, first.images)  # found in the user cache


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if shutil.which("mount") is None or not sys.platform.startswith("linux"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def test_disk_full_on_a_real_small_tmpfs(tmp_path: Path, png) -> None:
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the simulated tests cover this")
    try:
        for i in range(40):
            png(tmp_path / "data" / f"{i:02d}.png", i, size=(32, 32))  # 123 kB of pixels > 64 kB
        script = (
            "import sys\nfrom relssl.data import DataError, load_split\n"
            "try:\n"
            f"    load_split('imagefolder', 'all', {str(tmp_path / 'data')!r}, cache_dir={str(mount / 'c')!r},"
            " progress=False)\n"
            "except DataError as exc:\n    print(exc)\n    sys.exit(2)\n"
        )
        # A child process: the old sparse memory map died of SIGBUS here, which would take pytest down with it.
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
        assert done.stdout.startswith("no space left") and done.stdout.count("\n") == 1
        assert [p.name for p in (mount / "c").rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# --- integrity ------------------------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime


def test_flipped_byte_in_the_cache_is_found_by_the_default_check(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path)
    expected = np.array(load(tmp_path).images)
    flip_byte(tmp_path / ".relssl_cache" / "imagefolder_train" / "images.npy", -7)
    with pytest.warns(RelsslWarning, match=r"images\.npy.*checksum.*rebuil"):
        again = load(tmp_path)
    np.testing.assert_array_equal(again.images, expected)


def test_flipped_byte_in_a_middle_chunk_is_found_by_the_full_check(tmp_path: Path, make_folder,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from relssl.data import cache

    monkeypatch.setattr(cache, "HASH_CHUNK", 256)  # 20 x 48 pixel bytes + header: 5 chunks
    make_folder(tmp_path, n=10)
    expected = np.array(load(tmp_path).images)
    flip_byte(tmp_path / ".relssl_cache" / "imagefolder_train" / "images.npy", 600)
    assert not np.array_equal(load(tmp_path).images, expected)  # documented: the default check reads 2 chunks
    with pytest.warns(RelsslWarning, match="checksum"):
        again = load(tmp_path, verify=True)
    np.testing.assert_array_equal(again.images, expected)


def test_labels_altered_in_place_are_found(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path)
    load(tmp_path)
    labels = tmp_path / ".relssl_cache" / "imagefolder_train" / "labels.npy"
    flip_byte(labels, -8)  # the first byte of the last label
    with pytest.warns(RelsslWarning, match=r"labels\.npy"):
        assert load(tmp_path).labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_same_size_same_mtime_source_replacement_is_found_only_with_verify(tmp_path: Path, make_folder,
                                                                           png) -> None:
    make_folder(tmp_path)
    assert load(tmp_path).images[1, 0, 0, 0] == 1
    target = tmp_path / "train" / "a" / "1.png"
    stat = target.stat()
    png(target, 7, size=(4, 4))
    assert target.stat().st_size == stat.st_size  # the same size: only the content differs
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load(tmp_path).images[1, 0, 0, 0] == 1  # documented: the default key sees path, size and mtime only
    with pytest.warns(RelsslWarning, match=r"source files .*changed.*rebuil"):
        assert load(tmp_path, verify=True).images[1, 0, 0, 0] == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt and recorded: no second warning
        assert load(tmp_path, verify=True).images[1, 0, 0, 0] == 7


def test_verify_cache_config_key() -> None:
    assert DataConfig().verify_cache is False
    assert DataConfig(verify_cache=True).verify_cache is True


# --- leftovers of killed writes -------------------------------------------------------------------------------



def test_stale_cache_temp_files_are_removed_on_the_next_load(tmp_path: Path, make_folder, leftover) -> None:
    make_folder(tmp_path)
    load(tmp_path)
    folder = tmp_path / ".relssl_cache" / "imagefolder_train"
    old = [leftover(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp", 2 * HOUR)
           for name in ("images.npy", "labels.npy", "meta.json")]
    fresh = leftover(folder, ".images.npy.fresh123.tmp", 5)  # maybe another process's write in progress
    foreign = leftover(folder, ".notes.tmp", 2 * HOUR)  # not a name the cache writes
    load(tmp_path)
    assert not any(p.exists() for p in old) and fresh.exists() and foreign.exists()


def test_stale_cache_temp_files_are_removed_on_the_next_store(tmp_path: Path, make_folder, leftover) -> None:
    make_folder(tmp_path)
    folder = tmp_path / ".relssl_cache" / "imagefolder_train"
    folder.mkdir(parents=True)
    old = leftover(folder, ".images.npy.abcd1234.tmp", 2 * HOUR)  # a write killed before any cache existed
    fresh = leftover(folder, ".images.npy.efgh5678.tmp", 0)
    load(tmp_path)
    assert not old.exists() and fresh.exists()
    assert (folder / "meta.json").exists()


def test_store_replaces_files_only_after_both_arrays_are_written(tmp_path: Path, make_folder,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from relssl.data import cache

    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    make_folder(root)
    load(root, cache_dir=cache_dir)
    folder = cache_dir / "imagefolder_train"
    before = snapshot(folder)
    touch_source(root)
    real = cache._write_npy
    calls: list[str] = []

    def labels_fail(target: Path, array: np.ndarray):
        calls.append(Path(target).name)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(target, array)

    monkeypatch.setattr(cache, "_write_npy", labels_fail)
    with pytest.raises(DataError, match="cannot write the decode cache"):
        load(root, cache_dir=cache_dir)
    assert calls == ["images.npy", "labels.npy"] and snapshot(folder) == before


def test_verify_cache_flag_reaches_the_training_cache(tmp_path: Path, make_folder, png) -> None:
    from relssl.cli import main

    root = tmp_path / "data"
    make_folder(root)
    assert load(root, image_size=16).images[1, 0, 0, 0] == 1
    target = root / "train" / "a" / "1.png"
    stat = target.stat()
    png(target, 7, size=(4, 4))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same path, size and mtime: only --verify-cache sees it
    train = ["train", "--dataset", "imagefolder", "--data-root", str(root), "--k", "2", "--batch-size", "4",
             "--max-steps", "1", "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--set", "eval.linear=false",
             "--set", "data.image_size=16"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RelsslWarning)
        assert main([*train, "--run-name", "plain"]) == 0
    with pytest.warns(RelsslWarning, match=r"source files .*changed.*rebuil"):
        assert main([*train, "--run-name", "verified", "--verify-cache"]) == 0
    assert load(root, image_size=16).images[1, 0, 0, 0] == 7
