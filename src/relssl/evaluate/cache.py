"""A directory of cached feature tensors, written atomically and loaded without unpickling."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.torch as _safetensors
import torch
from safetensors import safe_open

from relssl.errors import DataError

__all__ = ["FeatureCache"]

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")
_TENSOR_NAME = "features"
_SUFFIX = {"safetensors": ".safetensors", "npy": ".npy"}

Format = Literal["safetensors", "npy"]


class FeatureCache:
    """Feature tensors stored one file per key under ``directory``.

    Files are safetensors (or ``.npy`` with ``format="npy"``): reading one never runs
    pickle, so a cache directory from elsewhere cannot execute code. Each write goes to a temporary
    file in the same directory and is moved into place with ``os.replace``, so a crash leaves either
    the old entry or the new one, never half a file. Keys are file-name-safe strings
    (letters, digits and ``. _ = + -``), e.g. ``"resnet32-ep200-cifar10-train"``.
    """

    def __init__(self, directory: str | Path, *, format: Format = "safetensors") -> None:
        if format not in _SUFFIX:
            raise ValueError(f"format must be 'safetensors' or 'npy', got {format!r}")
        self.directory = Path(directory)
        self.format: Format = format

    def path(self, key: str) -> Path:
        """The file that holds ``key`` in this cache's format."""
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key in (".", ".."):
            raise ValueError(
                f"cache key {key!r} is not a safe file name: use 1-200 letters, digits and '._=+-', "
                "starting with a letter or digit"
            )
        return self.directory / (key + _SUFFIX[self.format])

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str, identity: Mapping[str, Any] | None = None) -> torch.Tensor | None:
        """The tensor stored under ``key``, or ``None`` when there is none; a corrupt file is an error.

        With ``identity``, an entry stored with another identity (see ``put``) counts as absent.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            if self.format == "safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    stored = (handle.metadata() or {}).get("identity")
                    names = list(handle.keys())
                    if names != [_TENSOR_NAME]:
                        raise ValueError(f"expected one tensor named {_TENSOR_NAME!r}, found {sorted(names)}")
                    tensor = handle.get_tensor(_TENSOR_NAME)
            else:
                sidecar = path.with_suffix(".json")
                stored = sidecar.read_text() if sidecar.is_file() else None
                tensor = torch.from_numpy(np.load(path, allow_pickle=False))
        except Exception as error:  # noqa: BLE001 - any failure to parse means the same thing to the caller
            raise DataError(f"feature cache file {path} is unreadable ({error}); delete it to recompute") from error
        if identity is not None and stored != _identity_text(identity):
            return None
        return tensor

    def put(self, key: str, features: torch.Tensor, identity: Mapping[str, Any] | None = None) -> None:
        """Store ``features`` (copied to CPU) under ``key``, replacing any previous entry atomically.

        ``identity`` (JSON-able: what determines the features) is stored beside them, in the
        safetensors metadata or a ``.json`` file next to a ``.npy``.
        """
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        path = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        tensor = features.detach().cpu().contiguous()
        text = _identity_text(identity) if identity is not None else None
        if self.format == "npy" and text is not None:
            path.with_suffix(".json").write_text(text)
        if self.format == "safetensors":
            metadata = {"key": key, **({"identity": text} if text is not None else {})}
            payload = _safetensors.save({_TENSOR_NAME: tensor}, metadata=metadata)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                if self.format == "safetensors":
                    handle.write(payload)
                else:
                    np.save(handle, tensor.numpy(), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor],
                       identity: Mapping[str, Any] | None = None) -> torch.Tensor:
        """The cached tensor for ``key`` (and ``identity``), or ``compute()``'s result after storing it."""
        features = self.get(key, identity)
        if features is None:
            features = compute()
            self.put(key, features, identity)
        return features


def _identity_text(identity: Mapping[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, default=str)
