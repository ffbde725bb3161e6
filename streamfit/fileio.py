"""Crash-safe file writing: temporary name, fsync, rename into place."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def temp_name(path: Path) -> Path:
    """A unique temporary name beside `path` (same directory, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to fsync directories
        fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to `path`.
    On failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> dict:
    """Write `array` atomically as .npy; returns {"size", "sha256"} for a manifest."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
    return file_digest(path)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> dict:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def load_npy(path: Path, expected: dict | None, mmap: bool = True) -> np.ndarray:
    """Open a .npy (memory-mapped by default) after checking its size against a manifest
    entry; full checksums are checked by `verify`, which reads every byte."""
    from .errors import FormatError

    if not path.exists():
        raise FormatError(f"{path}: missing (the manifest names it)")
    if expected is not None and path.stat().st_size != expected["size"]:
        raise FormatError(f"{path}: size {path.stat().st_size} bytes, manifest says "
                          f"{expected['size']}: truncated or replaced")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise FormatError(f"{path}: not a readable .npy file ({exc})") from None


def verify(path: Path, expected: dict) -> None:
    from .errors import FormatError

    got = file_digest(path)
    if got != {"size": expected["size"], "sha256": expected["sha256"]}:
        raise FormatError(f"{path}: checksum mismatch (corrupted or replaced)")
