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

from ..errors import FormatError, StreamfitError


SIDECAR_SUFFIX = ".model.json"  # distinct, so that `evaluate … --json > m.json` cannot clobber it


def stem_of(path: str | os.PathLike) -> Path:
    """`weights.npy`, `weights.model.json`, `weights.json` and `weights` all name the model
    `weights`."""
    p = Path(path)
    if p.name.endswith(SIDECAR_SUFFIX):
        return p.with_name(p.name[:-len(SIDECAR_SUFFIX)])
    return p.with_suffix("") if p.suffix in (".npy", ".json") else p


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the model's sidecar is written: STEM.model.json."""
    return Path(f"{stem_of(path)}{SIDECAR_SUFFIX}")


def temp_name(path: Path) -> Path:
    """A unique temporary name beside `path` (same directory, so rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def stale_temps(path: Path) -> list[Path]:
    """The temporary files of `path` (`temp_name`) that killed writes left beside it; for a
    writer that holds the output's lock, so none is a live writer's."""
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def header_checksum(document: dict) -> str:
    """sha256 of a manifest's or sidecar's own fields (all but `written` and itself): an
    edited or damaged document is caught on load without reading the arrays it names."""
    body = {k: v for k, v in document.items() if k not in ("written", "header_checksum")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_document(path: Path, fmt: str, version: int, what: str) -> dict:
    """Load a streamfit JSON document (statistics manifest, weights sidecar), checking its
    format, schema version and own checksum."""

    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: corrupt {what} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise FormatError(f"{path}: not a streamfit {what}")
    if doc.get("schema_version") != version:
        raise FormatError(f"{path}: schema version {doc.get('schema_version')}, this "
                          f"streamfit reads {version}")
    if doc.get("header_checksum") != header_checksum(doc):
        raise FormatError(f"{path}: {what} checksum mismatch (edited or damaged)")
    return doc


def named_file(directory: Path, name, document: Path) -> Path:
    """The file `name` that the manifest or sidecar `document` names: only a plain file
    name, which stays inside `directory` (the document's own), is followed; `../`, an
    absolute path or anything else is refused, so that a document cannot make streamfit
    read (or remove) files elsewhere."""
    from ..errors import FormatError

    if not (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
            and os.path.basename(name) == name and os.sep not in name and "/" not in name):
        raise FormatError(f"{document}: names the file {name!r}, which is not a plain file "
                          f"name in {directory}: refused (only files beside it are read)")
    return directory / name


def check_csr(indptr: np.ndarray, indices: np.ndarray, n_rows: int, n_cols: int,
              names: tuple[Path, Path], block: int = 1 << 22) -> None:
    """Refuse a CSR structure that would send a kernel outside its arrays: indptr of
    n_rows + 1 integers from 0, never decreasing, ending at the number of indices, and
    every index in 0..n_cols-1. One vectorised pass over both arrays, a block at a time
    (memory-mapped arrays stay out of memory); `names` are their files, for the message."""
    from ..errors import FormatError

    ptr_name, idx_name = names
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise FormatError(f"{ptr_name}, {idx_name}: CSR arrays must hold integers, not "
                          f"{indptr.dtype} / {indices.dtype}")
    if indptr.shape != (n_rows + 1,):
        raise FormatError(f"{ptr_name}: {indptr.shape[0]} entries, {n_rows + 1} expected")
    if int(indptr[0]) != 0:
        raise FormatError(f"{ptr_name}: damaged (starts at {int(indptr[0])}, not 0)")
    for lo in range(0, n_rows, block):
        part = np.asarray(indptr[lo:lo + block + 1])
        bad = np.flatnonzero(part[1:] < part[:-1])
        if bad.size:
            row = lo + int(bad[0])
            raise FormatError(f"{ptr_name}: damaged (not increasing at row {row}: "
                              f"{int(part[bad[0]])} then {int(part[bad[0] + 1])})")
    if int(indptr[-1]) != indices.size:
        raise FormatError(f"{ptr_name}: damaged (its end, {int(indptr[-1])}, is not the "
                          f"{indices.size} entries of {idx_name.name})")
    for lo in range(0, indices.size, block):
        part = np.asarray(indices[lo:lo + block])
        low, high = int(part.min()), int(part.max())
        if low < 0 or high >= n_cols:
            at = lo + int(np.flatnonzero((part < 0) | (part >= n_cols))[0])
            raise FormatError(f"{idx_name}: damaged (entry {at} is {int(indices[at])}, out of "
                              f"range 0..{n_cols - 1})")


ARRAY_ENTRY = {"file": str, "dtype": str, "shape": list, "size": int, "sha256": str}


def check_fields(doc: dict, fields: dict, path: Path, what: str, prefix: str = "") -> None:
    """Refuse a document (manifest, sidecar) that lacks one of `fields` ({key: type}) or
    holds a value of another type: a clear error instead of a KeyError deep inside."""
    from ..errors import FormatError

    where = f" in {prefix}" if prefix else ""
    for key, kind in fields.items():
        if key not in doc:
            raise FormatError(f"{path}: {what} has no {key!r} entry{where} (edited or damaged)")
        value = doc[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise FormatError(f"{path}: {what} entry {key!r}{where} is {value!r}, not a "
                              f"{getattr(kind, '__name__', 'number')}")


def check_array_entries(doc: dict, names, path: Path, what: str) -> None:
    """Every array of `names` has an entry with its file, dtype, shape, size and sha256."""
    check_fields(doc, {"arrays": dict}, path, what)
    for name in names:
        check_fields(doc["arrays"], {name: dict}, path, what, "arrays")
        check_fields(doc["arrays"][name], ARRAY_ENTRY, path, what, f"arrays/{name}")


def load_listed_arrays(document: Path, entries: dict[str, dict], *,
                       check: bool = False) -> dict[str, np.ndarray]:
    """Open, memory-mapped, the arrays a manifest or sidecar lists (`entries`: name → its
    entry): each must be a plain file beside `document`, of the recorded size, shape and
    dtype (and with `check`, of the recorded sha256, which reads every byte)."""
    arrays = {}
    for name, entry in entries.items():
        p = named_file(document.parent, entry["file"], document)
        if check:
            verify(p, entry)
        arr = load_npy(p, entry)
        if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
            raise FormatError(f"{p}: shape/dtype {arr.shape}/{arr.dtype} does not match "
                              f"{document.name} ({entry['shape']}/{entry['dtype']})")
        arrays[name] = arr
    return arrays


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cached(fd: int, start: int = 0, end: int = 0) -> None:
    """Let the kernel drop the cached pages of bytes [start, end) of the open file `fd`
    (end 0: to the end of the file) — data already written to the disk, or read into
    buffers of our own. A spill's files are read once, much later: cached, they only grow
    the page cache, and where a virtual machine hands its free memory back to the host
    (free page reporting), every page the cache takes anew costs a fault on the host:
    6-15 s per GiB measured on this project's 2-core machines, against about 0.1 s for
    pages just freed. Only clean pages go; elsewhere than Linux, nothing is done."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, start, max(end - start, 0) if end else 0, os.POSIX_FADV_DONTNEED)


def prefetch(fd: int, start: int, end: int) -> None:
    """Ask the kernel to read bytes [start, end) of `fd` into its cache in the background
    (a merge's next window of a run, while it sorts this one); elsewhere, nothing."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None and end > start:
        with contextlib.suppress(OSError):
            advise(fd, start, end - start, os.POSIX_FADV_WILLNEED)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to fsync directories
        fsync_path(path)


def disk_full(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space(path: Path, needed: int | None = None, free: int | None = None):
    """The DiskFullError of writing `path` (`needed` bytes, when known)."""
    from ..errors import DiskFullError

    return DiskFullError(path, needed, free)


def create_memmap(path: Path, dtype, shape: tuple[int, ...], name: Path | None = None) -> np.memmap:
    """open_memmap(path, "w+"), with the file's blocks reserved first: a memory map over
    blocks a full disk cannot supply kills the process with SIGBUS when written, so a disk
    without room is reported here, as a DiskFullError naming the size needed (and `name`,
    the file that `path` is a temporary name of)."""
    import shutil

    from numpy.lib.format import open_memmap

    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    free = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(Path(path).parent).free
    if free is not None and free < size:
        raise no_space(name or path, size, free)
    out = open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    reserve = getattr(os, "posix_fallocate", None)
    if reserve is not None:
        fd = os.open(path, os.O_RDWR)
        try:
            reserve(fd, 0, os.path.getsize(path))
        except OSError as exc:
            if disk_full(exc):
                full = no_space(name or path, size)  # the free space before the file goes
                del out
                Path(path).unlink(missing_ok=True)
                raise full from None
            import errno
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        finally:
            os.close(fd)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to `path`.
    On failure the temporary file is removed and `path` is untouched; a full disk is
    reported as a DiskFullError naming `path` (and the `needed` bytes, when given)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if disk_full(exc) and not isinstance(exc, StreamfitError):
            raise no_space(path, needed) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _npy_parts(array: np.ndarray) -> tuple:
    """The .npy header and the bytes of the contiguous `array`."""
    import io
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue(), array.data if array.ndim else array.tobytes()


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write `array` as .npy to `path` by plain writes (not numpy's tofile: a full disk is
    then an OSError with ENOSPC), neither fsynced nor renamed: the caller's to do."""
    with open(path, "wb") as fh:
        for part in _npy_parts(np.ascontiguousarray(array)):
            fh.write(part)


def save_npy(path: str | os.PathLike, array: np.ndarray, digest: bool = True) -> dict | None:
    """Write `array` atomically as .npy; returns {"size", "sha256"} for a manifest (with
    `digest`: of the bytes as written, hashed from memory rather than read back)."""
    array = np.ascontiguousarray(array)
    with atomic_path(path, needed=array.nbytes) as tmp:
        write_npy(tmp, array)
    if not digest:
        return None
    parts = _npy_parts(array)
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return {"size": len(parts[0]) + array.nbytes, "sha256": h.hexdigest()}


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> dict:
    """{"size", "sha256"} of a file, read through one buffer: a new bytes object a read
    is a fresh mapping past glibc's mmap threshold, whose page faults cost more than
    hashing it."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while got := fh.readinto(buf):
            h.update(view[:got])
            size += got
    return {"size": size, "sha256": h.hexdigest()}


def load_npy(path: Path, expected: dict | None, mmap: bool = True) -> np.ndarray:
    """Open a .npy (memory-mapped by default) after checking its size against a manifest
    entry; full checksums are checked by `verify`, which reads every byte."""

    if not path.exists():
        raise FormatError(f"{path}: missing (the manifest names it)")
    if expected is not None and path.stat().st_size != expected["size"]:
        raise FormatError(f"{path}: size {path.stat().st_size} bytes, manifest says "
                          f"{expected['size']}: truncated or replaced")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise FormatError(f"{path}: not a readable .npy file ({exc})") from None


class StreamingDigest:
    """The sha256 of a .npy file computed from its array as a reader streams through it
    anyway — blocks fed in order, no second read — checked against a manifest entry at
    the end. Only the header is read from the file itself."""

    def __init__(self, path: Path, array: np.ndarray, expected: dict):
        self.path, self.expected = Path(path), expected
        header = os.path.getsize(path) - array.nbytes
        with open(path, "rb") as fh:
            head = fh.read(max(header, 0))
        self.hash = hashlib.sha256(head)
        self.size = len(head)

    def update(self, part: np.ndarray) -> None:
        part = np.ascontiguousarray(part)
        self.hash.update(part.data if part.ndim else part.tobytes())
        self.size += part.nbytes

    def check(self) -> None:
        from ..errors import FormatError

        if self.size != self.expected["size"] or self.hash.hexdigest() != self.expected["sha256"]:
            raise FormatError(f"{self.path}: checksum mismatch (corrupted or replaced): its "
                              f"bytes are not those its manifest or sidecar recorded")


def verify(path: Path, expected: dict) -> None:

    got = file_digest(path)
    if got != {"size": expected["size"], "sha256": expected["sha256"]}:
        raise FormatError(f"{path}: checksum mismatch (corrupted or replaced)")


class NpyWriter:
    """Append rows to a 1-d .npy whose length is known only at the end: a fixed-size
    header is written first and rewritten with the final length on `close`, so the file
    is a plain .npy any numpy can memory-map. Write to a temporary name and rename."""

    HEADER_BYTES = 128

    def __init__(self, path: Path, dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._fh = open(self.path, "wb")
        self._fh.write(self.header(self.dtype, 0))

    @classmethod
    def header(cls, dtype, n: int) -> bytes:
        """The fixed-size header of such a file of `n` elements of `dtype`."""
        body = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                     "fortran_order": False, "shape": (n,)}).encode("latin1")
        pad = cls.HEADER_BYTES - 10 - len(body) - 1
        return b"\x93NUMPY\x01\x00" + (cls.HEADER_BYTES - 10).to_bytes(2, "little") + \
            body + b" " * pad + b"\n"

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self._fh.write(memoryview(values).cast("B"))  # the array's own bytes, not a copy
        self.n += values.size

    def abort(self) -> None:
        """Close without finishing (the caller removes the file); buffered bytes that cannot
        be written (a full disk) are dropped."""
        with contextlib.suppress(OSError):
            self._fh.close()

    def close(self, sync: bool = True) -> None:
        self._fh.seek(0)
        self._fh.write(self.header(self.dtype, self.n))
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())
        self._fh.close()


class DirectoryLock:
    """An exclusive advisory lock on a directory itself (flock on its file descriptor):
    held while a process writes there, released by the kernel if the process dies, and
    leaves no file behind."""

    def __init__(self, directory: Path):
        self.path = Path(directory)

    def __enter__(self) -> "DirectoryLock":
        import fcntl


        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StreamfitError(f"{self.path} is in use by another streamfit process: one "
                                 f"writer at a time; wait for it to finish (or use another "
                                 f"directory)") from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._fd)  # closing the descriptor releases the lock


_HELD_OUTPUTS: dict[str, list] = {}  # lock file -> [descriptor, depth] held by this process


class OutputLock:
    """An exclusive lock on one output (a model's files, named by their stem) for as long as
    a command writes it: flock on a lock file `.NAME.lock` beside it, removed on release.
    A second process writing the same output is refused with a clear message instead of
    deleting the first one's temporary files as stale. Reentrant within a process; the
    kernel releases it if the process dies (a lock file left then is taken over)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = self.path.parent / f".{self.path.name}.lock"

    def __enter__(self) -> "OutputLock":
        import fcntl

        from ..errors import StreamfitError

        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._key = str(self.file.resolve())
        if self._key in _HELD_OUTPUTS:
            _HELD_OUTPUTS[self._key][1] += 1
            return self
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StreamfitError(f"{self.path} is being written by another streamfit "
                                     f"process: one writer at a time; wait for it to finish "
                                     f"(or write another output)") from None
            try:  # its last holder may have removed the file between our open and flock
                if os.stat(self.file).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        _HELD_OUTPUTS[self._key] = [fd, 1]
        return self

    def __exit__(self, *exc) -> None:
        held = _HELD_OUTPUTS[self._key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD_OUTPUTS[self._key]
            with contextlib.suppress(OSError):
                self.file.unlink()  # while still locked: a waiting opener retries
            os.close(held[0])


_FAULTS: dict[str, int] | None = None


def fault_point(name: str) -> None:
    """Fault injection for crash tests: with STREAMFIT_FAULT="name:n", the n-th time this
    point is reached the process kills itself with SIGKILL (no cleanup, like power loss)."""
    global _FAULTS
    if _FAULTS is None:
        spec = os.environ.get("STREAMFIT_FAULT", "")
        _FAULTS = {}
        for item in filter(None, spec.split(",")):
            point, _, count = item.partition(":")
            _FAULTS[point] = int(count or 1)
    if name in _FAULTS:
        _FAULTS[name] -= 1
        if _FAULTS[name] <= 0:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces `path` (the old
    one is renamed aside first and removed last, so `path` is never half-written)."""
    import shutil

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # unlike mkdtemp, honours the umask for the final directory's mode
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def available_memory() -> int | None:
    """Bytes of memory the system can give a process now (Linux: MemAvailable), or None
    where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_output_folder(out: Path, overwrite: bool, is_ours, what: str) -> None:
    """Refuse, before any work, to replace a folder the command `what` did not write
    (`is_ours(folder)` says), or one it did without `overwrite`; an empty folder is filled."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise StreamfitError(f"{out}: exists and is not a folder; --out names a folder to create")
    if not any(out.iterdir()):
        return
    if not is_ours(out):
        raise StreamfitError(f"{out}: a folder that streamfit {what} did not write; refused "
                             f"(choose another --out)")
    if not overwrite:
        raise StreamfitError(f"{out}: holds an earlier streamfit {what} output; pass "
                             f"--overwrite to replace it")
