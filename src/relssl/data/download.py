"""Fetch a dataset archive with checksum verification and unpack it safely.

Downloads go to a temporary file next to the target (`.<name>.XXXXXXXX.part`) and are renamed
into place only after the checksum matches, so an interrupted or corrupted download never looks
like a good archive. A `.part` file of the same archive left by a killed download is removed when
that download starts again, once it has not been written to for an hour (STALE_AFTER_S): a live
download writes at least every minute, so two downloads of one archive may run at once safely.
Extraction refuses members with absolute paths, `..` components, links or device files, and
unpacks into a temporary folder that is moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relssl.data.leftovers import STALE_AFTER_S, mkstemp_pattern, remove_stale
from relssl.data.paths import can_create_in
from relssl.errors import DataError
from relssl.progress import Progress

__all__ = ["STALE_AFTER_S", "Archive", "check_digest", "download", "ensure_extracted", "extract", "file_digest"]

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """A published dataset archive: its URL, the file name to store it under, and its checksum(s)."""

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes ('md5' or 'sha256')."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, archive: Archive) -> None:
    """Raise DataError unless `path` has the archive's published checksum(s)."""
    for algorithm, expected in (("md5", archive.md5), ("sha256", archive.sha256)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise DataError(
                    f"checksum mismatch for {path} ({algorithm} {actual}, expected {expected}); "
                    f"the file is corrupt or not the one published at {archive.url}. Delete it and download again."
                )


def download(archive: Archive, dest: Path, *, progress: bool = True) -> Path:
    """Download `archive` to `dest` (atomically, verified); on any failure nothing is left at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest.parent, mkstemp_pattern([f".{dest.name}."], ".part"))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(archive.url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with Progress(total, f"download {dest.name}", "B", unit_scale=True, show=progress) as bar:
                    for block in iter(lambda: response.read(_BLOCK), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(
                f"cannot download {archive.url}: {exc}. Download it by hand and place it at {dest}."
            ) from exc
        check_digest(tmp, archive)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def extract(archive_path: Path, dest: Path) -> list[Path]:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip into `dest`, refusing unsafe members; return the top-level paths.

    Everything is unpacked into a temporary folder inside `dest` first and moved into place
    only when complete, replacing any earlier (partial) copy of the same top-level entries.
    """
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        if zipfile.is_zipfile(archive_path):
            _extract_zip(archive_path, staging)
        elif tarfile.is_tarfile(archive_path):
            _extract_tar(archive_path, staging)
        else:
            raise DataError(f"{archive_path} is neither a tar nor a zip archive. Delete it and download again.")
        placed = []
        for entry in sorted(staging.iterdir()):
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
            placed.append(target)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_member_name(name: str, archive_path: Path) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(
            f"refusing to extract {archive_path}: member {name!r} would be written outside the target folder. "
            "The archive is not the published one; delete it."
        )


def _extract_tar(archive_path: Path, staging: Path) -> None:
    try:
        with tarfile.open(archive_path) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member_name(member.name, archive_path)
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"refusing to extract {archive_path}: member {member.name!r} is a link or special file. "
                        "The archive is not the published one; delete it."
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12: a second line of defence
                tar.extractall(staging, members=members, filter="data")
            else:  # pragma: no cover - older Pythons
                tar.extractall(staging, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot unpack {archive_path}: {exc}. Delete it and download again.") from exc


def _extract_zip(archive_path: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(archive_path) as archive:
            infos = archive.infolist()
            for info in infos:
                _check_member_name(info.filename, archive_path)
                mode = (info.external_attr >> 16) & 0o170000
                if mode not in (0, 0o100000, 0o040000):  # only plain files and folders
                    raise DataError(
                        f"refusing to extract {archive_path}: member {info.filename!r} is a link or special file. "
                        "The archive is not the published one; delete it."
                    )
            archive.extractall(staging, members=infos)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot unpack {archive_path}: {exc}. Delete it and download again.") from exc


def ensure_extracted(
    root: Path, required: Sequence[Path], archive: Archive, *, dataset: str, download_allowed: bool, progress: bool
) -> None:
    """Make sure every path in `required` exists under `root`, downloading and unpacking `archive` if allowed.

    An archive already present in `root` (e.g. fetched by hand) is verified and unpacked even
    when downloading is off, and kept; a downloaded one is deleted once unpacked. Missing files
    end in a DataError that says where they were expected and how to get them.
    """
    if all(path.exists() for path in required):
        return
    missing = next(path for path in required if not path.exists())
    local = root / archive.filename
    if local.exists() or download_allowed:
        if not can_create_in(root):
            raise DataError(
                f"{dataset}: {missing} is missing and {root} is not writable, so the dataset cannot be "
                f"downloaded there. Pass a writable root, or unpack {archive.url} into {root} yourself."
            )
        downloaded = not local.exists()
        if downloaded:
            download(archive, local, progress=progress)
        else:
            check_digest(local, archive)
        extract(local, root)
        if all(path.exists() for path in required):
            if downloaded:  # ours to remove once unpacked (STL-10's is 2.6 GB); one placed by hand is kept
                local.unlink()
            return
        missing = next(path for path in required if not path.exists())
        raise DataError(
            f"{dataset}: unpacked {local} but {missing} is still missing; the archive does not have the "
            "expected layout. Delete it and download again."
        )
    raise DataError(
        f"{dataset}: expected {missing}, which does not exist. To fix: allow downloading (download=True; drop "
        f"--no-download), or download {archive.url} (md5 {archive.md5}) and unpack it into {root}."
    )
