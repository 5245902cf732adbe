"""Safe file I/O for every reader and writer.

* Outputs: :func:`atomic_path` / :func:`atomic_write` write to a temporary file in the target's
  folder, fsync it, rename it over the target and fsync the folder; on any error the temporary
  file is removed, so a half-written file never exists under the target's name. Before writing,
  :func:`check_output` refuses a target that is an input of the same command or an existing
  non-regular file (a folder, FIFO, socket or device such as ``/dev/null``; streamed outputs,
  ``localize --out``, may be a FIFO or character device, written as they are).
* Inputs: :func:`open_regular` opens regular files only, without blocking on a FIFO.
* Output folders (a map folder of tiles): :func:`atomic_folder` fills a temporary folder beside
  the target and renames it into place, so a killed write never leaves a half-written folder.

This module sits below every layer (apps -> export -> calib -> runtime -> engines -> here).
"""
from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from segvlad_edge.errors import FileSafetyError, printable

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), streams: bool = False) -> Path:
    """``path`` as a Path, once it is safe to write: not the same file as any of ``inputs`` (files
    this command reads) and not an existing non-regular file, except, with ``streams``, a FIFO or
    a character device (``/dev/null``, a tty): outputs appended to as they are, never replaced
    (``localize --out``). Raises FileSafetyError."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise FileSafetyError(f"{printable(path)}: cannot check the output ({e.strerror or e})") from None
    if not (stat.S_ISREG(st.st_mode) or streams and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode))):
        raise FileSafetyError(f"{printable(path)}: is {_kind(st.st_mode)}; refusing to "
                              + ("write records into it" if streams else "replace it with an output file"))
    for src in inputs:
        try:
            same = os.path.samestat(st, os.stat(src))
        except OSError:
            continue
        if same:
            raise FileSafetyError(f"{printable(path)}: is an input of this command; refusing to overwrite it "
                                  "(choose another output name)")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write (by name, e.g. an ONNX
    export); on success it is fsync'ed and renamed over ``path``, on error removed.
    ``inputs``: files the command reads, which ``path`` must not be (see :func:`check_output`)."""
    path = check_output(path, inputs)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_output(path, inputs)            # still safe: nothing appeared there meanwhile
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), text: bool = False):
    """Yield a file object (binary, or UTF-8 text with ``text``) whose contents replace ``path``
    atomically when the block ends without an error (see :func:`atomic_path`)."""
    with atomic_path(path, inputs) as tmp:
        with open(tmp, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            yield f


def write_bytes(path: str | os.PathLike, data: bytes, inputs: Iterable[str | os.PathLike] = ()) -> int:
    """Write ``data`` to ``path`` atomically; returns its length."""
    with atomic_write(path, inputs) as f:
        f.write(data)
    return len(data)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` for the caller to fill; on success it is renamed
    to ``path`` (which may not exist, or be an empty folder) and the parent folder fsync'ed; on
    error it is removed. The caller writes its files with :func:`atomic_write` (each fsync'ed)."""
    import shutil

    path = Path(path)
    _check_empty_folder(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_folder(tmp)
        _check_empty_folder(path)             # still free: nothing appeared there meanwhile
        os.replace(tmp, path)                 # over an empty folder, or a new name
        _fsync_folder(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_empty_folder(path: Path) -> None:
    """``path`` may become an output folder: absent, or an empty folder."""
    if not path.parent.is_dir():
        raise FileSafetyError(f"{printable(path.parent)}: output folder does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise FileSafetyError(f"{printable(path)}: is {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}; "
                              "refusing to replace it with a map folder")
    if any(os.scandir(path)):
        raise FileSafetyError(f"{printable(path)}: is a folder that is not empty; refusing to write a map folder "
                              "into it (choose a new name)")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                        # some file systems cannot fsync a folder; the rename stands
    finally:
        os.close(fd)


def open_regular(path: str | os.PathLike):
    """Open ``path`` for binary reading if it is a regular file (a FIFO is not waited on);
    raises FileSafetyError for anything else, OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileSafetyError(f"{printable(path)}: is {_kind(mode)}, not a regular file; refusing to read it")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of the regular file ``path``, streamed in ``chunk``-byte reads."""
    import hashlib

    h = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_regular(path: str | os.PathLike, limit: int | None = None, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``: a larger file raises
    FileSafetyError before it is read)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise FileSafetyError(f"{printable(path)}: {size} bytes is larger than the {limit} byte limit for a {what}")
        return f.read()
