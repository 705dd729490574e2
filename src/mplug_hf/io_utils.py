"""
Atomic writes: every file and folder mplug_hf writes goes through here, so that a reader (or the next run) sees
either the old content or the complete new content — never a half-written file, even when the writer is killed.

* [`atomic_write_text`] / [`atomic_write_json`] / [`atomic_write_bytes`]: write a temporary file in the target's
  folder, `fsync` it, then `os.replace` it onto the target (atomic on POSIX and Windows within one file system).
* [`atomic_open`]: the same as a context manager yielding a file handle; an exception inside the block leaves the
  target untouched and removes the temporary file.
* [`atomic_directory`]: a context manager yielding a temporary folder beside the target; on success the folder is
  moved into place (the previous folder, when `overwrite=True`, is moved aside first and removed after), on an
  exception the temporary folder is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """
    Open a temporary file beside `path` for writing; on a clean exit it is flushed, fsynced and renamed onto `path`.
    On an exception (or when the process dies) `path` keeps its previous content and the temporary is removed (a
    killed process can leave a `.<name>.*.tmp` file, never a half-written `path`).
    """
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open writes a whole new file; mode {mode!r} is not supported (use 'w' or 'wb')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(temporary)
    try:
        with os.fdopen(descriptor, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            # keep the target's permissions (mkstemp creates 0600 files)
            shutil.copymode(path, temporary)
        else:
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, content: Any, **dump_kwargs) -> Path:
    """`json.dump(content)` to `path` atomically (serialised first, so a non-serialisable value writes nothing)."""
    dump_kwargs.setdefault("ensure_ascii", False)
    text = json.dumps(content, **dump_kwargs)
    return atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """
    Yield an empty temporary folder beside `path`; write everything into it. On a clean exit it becomes `path`; on an
    exception it is removed and `path` (when it existed) is untouched.

    Args:
        path: the folder to create.
        overwrite: replace an existing `path` (moved aside, then removed once the new folder is in place); without
            it an existing non-empty `path` raises `FileExistsError` before anything is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        for root, _, files in os.walk(temporary):
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    os.fsync(handle.fileno())
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, aside / path.name)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(aside / path.name, path)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync_directory(path.parent)


__all__ = ["atomic_directory", "atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]
