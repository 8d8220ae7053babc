"""Download with checksum (file:// and a local HTTP server only), safe extraction, and the missing-data path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from relssl.data import DataError, cifar, load_split
from relssl.data.download import Archive, download, extract

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (nothing leaves this machine)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_file_url_verifies_md5(tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(b"x" * 3_000_000)
    dest = tmp_path / "out" / "blob.bin"
    download(Archive(source.as_uri(), "blob.bin", md5=md5(source)), dest, progress=False)
    assert dest.read_bytes() == source.read_bytes()
    assert leftovers(dest.parent) == []


def test_download_over_local_http_with_sha256(http_root: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = http_root
    (folder / "data.tar.gz").write_bytes(b"payload" * 1000)
    digest = hashlib.sha256((folder / "data.tar.gz").read_bytes()).hexdigest()
    dest = tmp_path / "dl" / "data.tar.gz"
    download(Archive(f"{url}/data.tar.gz", "data.tar.gz", sha256=digest), dest, progress=True)
    assert dest.read_bytes() == b"payload" * 1000


def test_wrong_checksum_fails_and_leaves_nothing(http_root: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = http_root
    (folder / "data.bin").write_bytes(b"tampered")
    dest = tmp_path / "dl" / "data.bin"
    with pytest.raises(DataError, match="checksum mismatch"):
        download(Archive(f"{url}/data.bin", "data.bin", md5="0" * 32), dest, progress=False)
    assert not dest.exists() and leftovers(dest.parent) == []
    with pytest.raises(DataError, match="checksum mismatch"):  # same over file://
        download(Archive((folder / "data.bin").as_uri(), "data.bin", md5="0" * 32), dest, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_unreachable_url_is_a_data_error(http_root: tuple[Path, str], tmp_path: Path) -> None:
    _, url = http_root
    dest = tmp_path / "dl" / "missing.bin"
    with pytest.raises(DataError, match=f"cannot download {url}/missing.bin"):
        download(Archive(f"{url}/missing.bin", "missing.bin", md5="0" * 32), dest, progress=False)
    assert not dest.exists() and leftovers(dest.parent) == []


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("bad", ["../evil.txt", "/tmp/relssl-evil-abs.txt", "ok/../../evil.txt", "link"])
def test_unsafe_tar_members_are_refused(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "a.tar.gz"
    if bad == "link":
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        members = [(tarfile.TarInfo("data/ok.txt"), b"fine"), (info, None)]
    else:
        members = [(tarfile.TarInfo("data/ok.txt"), b"fine"), (tarfile.TarInfo(bad), b"evil")]
    _tar_with(archive, members)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="refusing to extract"):
        extract(archive, dest)
    assert list(dest.iterdir()) == []  # nothing, not even the safe member or the staging folder
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/relssl-evil-abs.txt").exists()


def test_unsafe_zip_member_is_refused_and_safe_zip_extracts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("tiny/ok.txt", "fine")
        z.writestr("../evil.txt", "evil")
    with pytest.raises(DataError, match="refusing to extract"):
        extract(bad, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "dest").iterdir()) == []
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("tiny/sub/ok.txt", "fine")
    assert extract(good, tmp_path / "dest") == [tmp_path / "dest" / "tiny"]
    assert (tmp_path / "dest" / "tiny" / "sub" / "ok.txt").read_text() == "fine"


def make_cifar10_archive(path: Path) -> None:
    """A small cifar-10-python.tar.gz with the official member names (pickles made by Python 3)."""
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, obj: object) -> None:
            data = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add(name, {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 2]})
        add("batches.meta", {"label_names": NAMES})


def test_load_split_downloads_verifies_and_extracts(http_root: tuple[Path, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = http_root
    make_cifar10_archive(folder / "cifar-10-python.tar.gz")
    checksum = md5(folder / "cifar-10-python.tar.gz")
    archive = Archive(f"{url}/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", md5=checksum)
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", archive)
    root = tmp_path / "data" / "cifar10"
    data = load_split("cifar10", "train", root, progress=False)
    assert data.images.shape == (10, 32, 32, 3) and data.classes == tuple(NAMES)
    assert (root / "cifar-10-batches-py" / "test_batch").exists()
    assert sorted(p.name for p in root.iterdir()) == [".relssl_cache", "cifar-10-batches-py"]  # archive removed
    assert len(load_split("cifar10", "test", root, download=False, progress=False)) == 2


def test_load_split_wrong_checksum_keeps_nothing(http_root: tuple[Path, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = http_root
    make_cifar10_archive(folder / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", Archive(f"{url}/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                                                           md5="c58f30108f718f92721af3b95e74349a"))
    root = tmp_path / "cifar10"
    with pytest.raises(DataError, match="checksum mismatch"):
        load_split("cifar10", "train", root, progress=False)
    assert list(root.iterdir()) == []


def test_archive_placed_by_hand_is_used_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cifar10"
    root.mkdir()
    make_cifar10_archive(root / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", Archive("http://127.0.0.1:9/unused", "cifar-10-python.tar.gz",
                                                           md5=md5(root / "cifar-10-python.tar.gz")))
    assert len(load_split("cifar10", "test", root, download=False, progress=False)) == 2
    assert (root / "cifar-10-python.tar.gz").exists()  # placed by hand: kept


def test_missing_data_message_for_each_downloadable_dataset(tmp_path: Path) -> None:
    for name, archive in (("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
                          ("cifar100-20", "cifar-100-python.tar.gz"), ("stl10", "stl10_binary.tar.gz"),
                          ("tiny-imagenet", "tiny-imagenet-200.zip")):
        with pytest.raises(DataError) as info:
            load_split(name, "train", tmp_path / name, download=False, progress=False)
        message = str(info.value)
        assert str(tmp_path / name) in message and archive in message and "--no-download" in message


def test_no_download_into_a_read_only_root(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(DataError, match="not writable"):
            load_split("cifar10", "train", root, download=True, progress=False)
        assert list(root.iterdir()) == []
    finally:
        root.chmod(0o755)
