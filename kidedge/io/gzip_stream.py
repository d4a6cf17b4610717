"""Sequential gzip decompression straight into caller-owned buffers.

Why not ``gzip.GzipFile``: its ``readinto`` goes through ``read`` and so briefly holds two
copies of what it reads (a 300 MiB volume would peak at 600 MiB), and it cannot be
rewound cheaply. Here zlib output lands in the caller's buffer a chunk at a time, so a
whole-volume read peaks at the volume plus one chunk, a slab read at the slab plus one
chunk; and the decompressor state can be saved (``zlib.Decompress.copy``) at chosen points
and restored later, which lets a slab reader walk a ``.nii.gz`` backwards in bounded
memory (the idea of indexed_gzip, done with the standard library).

Inflating is the floor of every read of a ``.nii.gz``. Where the optional ``isal``
package (python-isal, Intel's ISA-L inflate: ``pip install kidedge[fast-io]``) is
installed, a reader that needs no checkpoints inflates with it (inflating a 602-slice
512x512 int16 scan took 0.83 s instead of 1.44 s on the shared 2-core CPU; the whole read,
page faults of the new array included, 2.46 s instead of 3.77 s, nibabel 5.48 s, at load
average 8.6: benchmarks/results/inflate.md);
a reader that saves checkpoints uses zlib, because only zlib's state can be copied.
``KIDEDGE_INFLATE=zlib`` forces zlib everywhere (for comparisons); without isal, zlib is
used and nothing else changes.

Errors (truncated file, bad CRC, not gzip) are raised as :class:`GzipDataError` with a
short reason; callers turn them into a ``KidedgeError`` that names the file.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from kidedge.environment import usable_cores

try:  # optional: kidedge[fast-io]
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - depends on the installed extras
    _isal_zlib = None
try:  # optional: kidedge[fast-io]; parallel inflate of one gzip stream
    import rapidgzip as _rapidgzip
except ImportError:  # pragma: no cover - depends on the installed extras
    _rapidgzip = None

#: Most threads a parallel inflate uses (each holds a few MiB of chunks).
_PARALLEL_MAX_THREADS = 8

_GZIP_WBITS = 16 + zlib.MAX_WBITS
#: Errors a decompressor raises on corrupt data (isal has its own exception class).
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error,) + (
    (_isal_zlib.error,) if _isal_zlib is not None else ())
_INPUT_CHUNK = 256 * 1024
_OUTPUT_CHUNK = 1024 * 1024


class GzipDataError(Exception):
    """The gzip stream is truncated or corrupt."""


@dataclass(frozen=True)
class GzipCheckpoint:
    """A point to resume decompression from.

    Args:
        input_offset: byte offset in the compressed file of the first unconsumed input byte.
        decompressor: a private copy of the zlib state (32 KiB window plus bookkeeping).
        output_offset: how many decompressed bytes precede this point.
    """

    input_offset: int
    decompressor: object
    output_offset: int


def gzip_trailer_size(path: str | os.PathLike) -> int | None:
    """ISIZE from the gzip trailer: the uncompressed size modulo 2**32 of the LAST member.

    Returns None for files too short to have a trailer. A cheap (one seek) hint: equal to
    the expected size for every intact single-member file, a random number for a
    truncated one.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return None
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def inflate_engine(checkpoints: bool = False, parallel: bool = False) -> str:
    """The inflater a reader gets: ``"rapidgzip"`` (``parallel`` readers, more than one
    core, rapidgzip installed), ``"isal"`` (fast, no checkpoints) or ``"zlib"``.
    ``KIDEDGE_INFLATE`` = ``zlib`` or ``isal`` caps the choice (for comparisons)."""
    forced = os.environ.get("KIDEDGE_INFLATE", "").lower()
    if checkpoints or _isal_zlib is None or forced == "zlib":
        return "zlib"
    if parallel and _rapidgzip is not None and forced != "isal" and usable_cores() > 1:
        return "rapidgzip"
    return "isal"


def open_gzip_writer(path: str | os.PathLike):
    """A binary file object that writes gzip (level 1, nibabel's default for .nii.gz) to
    ``path``: ISA-L's deflate where isal is installed (a 602-slice label map in 0.02 s
    instead of zlib's 0.20 s, and a smaller file), else the standard library's.
    ``KIDEDGE_INFLATE=zlib`` forces zlib here too."""
    if inflate_engine() == "isal":
        from isal import igzip

        return igzip.open(path, "wb", compresslevel=1)
    import gzip

    return gzip.open(path, "wb", compresslevel=1)


class GzipReader:
    """Read a gzip file (one or more members) sequentially into buffers.

    Args:
        path: the .gz file.
        input_chunk: compressed bytes read from disk at a time.
        checkpoints: whether :meth:`checkpoint` will be called (it needs zlib; without
            it the faster isal inflater is used where installed, see
            :func:`inflate_engine`).
    """

    def __init__(self, path: str | os.PathLike, input_chunk: int = _INPUT_CHUNK,
                 checkpoints: bool = False) -> None:
        self.path = os.fspath(path)
        self.engine = inflate_engine(checkpoints)
        self._zlib = _isal_zlib if self.engine == "isal" else zlib
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._chunk = int(input_chunk)
        self._d = self._zlib.decompressobj(_GZIP_WBITS)
        self._in = b""  # compressed bytes read from the file but not yet consumed
        self._input_offset = 0  # file offset just after self._in
        self.position = 0  # decompressed bytes delivered so far

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> GzipReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _refill(self) -> bool:
        data = self._file.read(self._chunk)
        self._input_offset += len(data)
        self._in = data
        return bool(data)

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` (any writable buffer, e.g. a numpy array) completely.

        Raises GzipDataError when the stream ends (or is corrupt) before it is full.
        """
        view = memoryview(buffer).cast("B")
        want = len(view)
        filled = 0
        try:
            while filled < want:
                if self._d.eof:
                    # end of one gzip member: the next one starts in the unused data
                    self._in = self._d.unused_data + self._in
                    if not self._in and not self._refill():
                        raise GzipDataError(
                            f"ends after {self.position + filled} bytes of data, "
                            f"{want - filled} more expected (truncated)"
                        )
                    self._d = self._zlib.decompressobj(_GZIP_WBITS)
                if not self._in and not self._refill():
                    raise GzipDataError(f"truncated after {self.position + filled} decompressed bytes")
                # capped: 256 KiB of a mostly-air CT can inflate to tens of MiB at once
                out = self._d.decompress(self._in, min(want - filled, _OUTPUT_CHUNK))
                if self._d.eof:
                    # unused_data is the start of the next member (or trailing bytes)
                    self._in = self._d.unused_data
                    self._d = _EOF
                else:
                    self._in = self._d.unconsumed_tail
                view[filled : filled + len(out)] = out
                filled += len(out)
        except _INFLATE_ERRORS as exc:
            raise GzipDataError(f"corrupt gzip data ({exc})") from exc
        finally:
            self.position += filled
        return filled

    def skip(self, n_bytes: int, scratch_bytes: int = _OUTPUT_CHUNK) -> None:
        """Decompress and discard ``n_bytes``."""
        scratch = bytearray(min(max(n_bytes, 1), scratch_bytes))
        while n_bytes > 0:
            step = min(n_bytes, len(scratch))
            self.readinto(memoryview(scratch)[:step])
            n_bytes -= step

    def finish(self) -> None:
        """Consume the rest of the stream and check every member's CRC and length.

        Raises GzipDataError when the stream is truncated or corrupt; trailing data
        after the volume (allowed in NIfTI) is decompressed and discarded.
        """
        scratch = bytearray(_OUTPUT_CHUNK)
        try:
            while True:
                if self._d.eof:
                    self._in = self._d.unused_data + self._in
                    if not self._in and not self._refill():
                        return
                    if self._in.strip(b"\0") == b"" and not self._refill():
                        return  # zero padding after the last member, as gzip(1) accepts
                    self._d = self._zlib.decompressobj(_GZIP_WBITS)
                if not self._in and not self._refill():
                    raise GzipDataError("truncated (the gzip stream ends without its trailer)")
                out = self._d.decompress(self._in, len(scratch))
                self.position += len(out)
                if self._d.eof:
                    self._in = self._d.unused_data
                    self._d = _EOF
                else:
                    self._in = self._d.unconsumed_tail
        except _INFLATE_ERRORS as exc:
            raise GzipDataError(f"corrupt gzip data ({exc})") from exc

    def checkpoint(self) -> GzipCheckpoint:
        """Save the current position (about 45 KiB of zlib state).

        Raises:
            RuntimeError: the reader was opened without ``checkpoints=True``.
        """
        if self.engine != "zlib":
            raise RuntimeError("GzipReader: checkpoints need checkpoints=True (zlib state)")
        d = self._d
        copy = d if isinstance(d, _EofMarker) else d.copy()
        return GzipCheckpoint(self._input_offset - len(self._in), copy, self.position)

    def restore(self, point: GzipCheckpoint) -> None:
        """Resume from a checkpoint made by :meth:`checkpoint` on the same file."""
        if self.engine != "zlib":
            raise RuntimeError("GzipReader: restoring a checkpoint needs checkpoints=True (zlib state)")
        d = point.decompressor
        self._d = d if isinstance(d, _EofMarker) else d.copy()
        self._file.seek(point.input_offset)
        self._input_offset = point.input_offset
        self._in = b""
        self.position = point.output_offset


def open_whole_stream(path: str | os.PathLike) -> GzipReader:
    """A reader for one pass over a whole gzip file: :class:`ParallelGzipReader` where
    :func:`inflate_engine` picks rapidgzip, else :class:`GzipReader`."""
    if inflate_engine(parallel=True) == "rapidgzip":
        return ParallelGzipReader(path)
    return GzipReader(path)


class ParallelGzipReader(GzipReader):
    """:class:`GzipReader` over rapidgzip, which inflates one gzip stream on several cores
    at once (it finds deflate block starts speculatively and checks every member's CRC and
    length). The whole-volume read of a 602-slice 512x512 int16 scan took 0.49 s instead of
    ISA-L's 0.80 s and nibabel's 1.77 s on the quiet 2-core machine
    (benchmarks/results/inflate.md). No checkpoints."""

    def __init__(self, path: str | os.PathLike) -> None:  # noqa: D107 - see the class
        self.path = os.fspath(path)
        self.engine = "rapidgzip"
        self.position = 0
        # twice the cores: rapidgzip's stitching and copying of chunks is serial, and more
        # chunks in flight keep both cores inflating meanwhile (602-slice scan, 2 cores,
        # medians of 5: whole read 0.50 s with 2 threads, 0.45 s with 4; the whole int8
        # scan within run-to-run noise: 3.35 vs 3.25 s, later 4.52 vs 4.50 s on a busier
        # host; +40 MB peak RSS)
        threads = min(2 * usable_cores(), _PARALLEL_MAX_THREADS)
        try:
            self._rg = _rapidgzip.open(self.path, parallelization=threads)
        except (ValueError, RuntimeError) as exc:
            raise GzipDataError(f"not a readable gzip stream ({exc})") from exc

    def close(self) -> None:
        self._rg.close()  # joins its threads

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        try:
            while filled < len(view):
                got = self._rg.readinto(view[filled:])
                if not got:
                    raise GzipDataError(f"truncated after {self.position + filled} decompressed bytes")
                filled += got
        except (ValueError, RuntimeError) as exc:  # rapidgzip's errors for corrupt data
            raise GzipDataError(f"corrupt gzip data ({str(exc).splitlines()[0]})") from exc
        finally:
            self.position += filled
        return filled

    def finish(self) -> None:
        scratch = bytearray(_OUTPUT_CHUNK)
        try:
            while got := self._rg.readinto(scratch):
                self.position += got
        except (ValueError, RuntimeError) as exc:
            raise GzipDataError(f"corrupt gzip data ({str(exc).splitlines()[0]})") from exc


class _EofMarker:
    """Stands in for a finished zlib member; its leftover input already sits in ``_in``."""

    eof = True
    unused_data = b""


_EOF = _EofMarker()
