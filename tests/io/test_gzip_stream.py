"""The sequential gzip reader: exact bytes, multi-member files, checkpoints, errors, with
both inflaters (zlib, and isal where installed)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from kidedge.io import gzip_stream
from kidedge.io.gzip_stream import GzipDataError, GzipReader, gzip_trailer_size


@pytest.fixture(autouse=True, params=["zlib", "isal"])
def engine(request, monkeypatch):
    """Every test runs with each inflater (isal skipped where it is not installed)."""
    if request.param == "isal" and gzip_stream._isal_zlib is None:
        pytest.skip("isal (kidedge[fast-io]) is not installed")
    monkeypatch.setenv("KIDEDGE_INFLATE", request.param)
    return request.param


def test_engine_choice(tmp_path, engine):
    p = tmp_path / "e.gz"
    p.write_bytes(gzip.compress(b"x"))
    with GzipReader(p) as r:
        assert r.engine == engine
        if engine == "isal":
            with pytest.raises(RuntimeError, match="checkpoints"):
                r.checkpoint()
    with GzipReader(p, checkpoints=True) as r:  # checkpoints always need zlib
        assert r.engine == "zlib"


@pytest.fixture
def payload():
    return np.random.default_rng(0).integers(0, 50, 300_000, dtype=np.uint8).tobytes()


def _read_all(path, n, chunk=7777):
    out = bytearray(n)
    with GzipReader(path, input_chunk=1000) as r:
        for i in range(0, n, chunk):
            r.readinto(memoryview(out)[i : i + chunk])
        r.finish()
    return bytes(out)


def test_reads_exact_bytes(tmp_path, payload):
    p = tmp_path / "a.gz"
    p.write_bytes(gzip.compress(payload))
    assert _read_all(p, len(payload)) == payload
    assert gzip_trailer_size(p) == len(payload)


def test_multi_member_file(tmp_path, payload):
    p = tmp_path / "m.gz"
    half = len(payload) // 3
    p.write_bytes(gzip.compress(payload[:half]) + gzip.compress(payload[half:]))
    assert _read_all(p, len(payload)) == payload
    assert gzip_trailer_size(p) != len(payload)  # ISIZE is only the last member's


def test_checkpoint_restore_reads_the_same_bytes_again(tmp_path, payload):
    p = tmp_path / "c.gz"
    p.write_bytes(gzip.compress(payload[:100_000]) + gzip.compress(payload[100_000:]))
    with GzipReader(p, input_chunk=4096, checkpoints=True) as r:
        points = {}
        for pos in range(0, len(payload), 50_000):
            points[pos] = r.checkpoint()
            r.skip(50_000)
        for pos in sorted(points, reverse=True):
            r.restore(points[pos])
            buf = bytearray(min(50_000, len(payload) - pos))
            r.readinto(buf)
            assert bytes(buf) == payload[pos : pos + len(buf)]


def test_truncated_stream_raises(tmp_path, payload):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(payload)[:-100])
    with pytest.raises(GzipDataError, match="truncated"):
        _read_all(p, len(payload))


def test_bad_crc_raises_at_finish(tmp_path, payload):
    data = bytearray(gzip.compress(payload))
    data[-7] ^= 1
    p = tmp_path / "crc.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(GzipDataError, match="corrupt"):
        _read_all(p, len(payload))


# ---- the parallel whole-stream reader (rapidgzip, where installed and on 2+ cores)

@pytest.fixture
def parallel(engine, monkeypatch):
    """Run once (under the zlib param): rapidgzip chosen automatically."""
    if engine != "zlib":
        pytest.skip("the parallel reader runs once")
    monkeypatch.delenv("KIDEDGE_INFLATE")
    if gzip_stream.inflate_engine(parallel=True) != "rapidgzip":
        pytest.skip("rapidgzip (kidedge[fast-io]) is not installed, or one core only")


@pytest.fixture
def big_payload():
    # several of rapidgzip's 4 MiB chunks, so more than one thread takes part
    rng = np.random.default_rng(1)
    return np.repeat(rng.integers(0, 40, 3_000_000, dtype=np.uint8), 5).tobytes()


def _read_whole(path, n):
    out = bytearray(n)
    with gzip_stream.open_whole_stream(path) as r:
        assert r.engine == "rapidgzip"
        r.skip(10)
        r.readinto(memoryview(out)[10:])
        r.finish()
    return bytes(out[10:])


def test_parallel_reader_exact_bytes_and_members(tmp_path, parallel, big_payload):
    p = tmp_path / "p.gz"
    p.write_bytes(gzip.compress(big_payload, 1))
    assert _read_whole(p, len(big_payload)) == big_payload[10:]
    third = len(big_payload) // 3
    p.write_bytes(gzip.compress(big_payload[:third]) + gzip.compress(big_payload[third:]))
    assert _read_whole(p, len(big_payload)) == big_payload[10:]


def test_parallel_reader_errors(tmp_path, parallel, big_payload):
    data = gzip.compress(big_payload, 1)
    p = tmp_path / "t.gz"
    p.write_bytes(data[:-100])
    with pytest.raises(GzipDataError):
        _read_whole(p, len(big_payload))
    bad = bytearray(data)
    bad[-7] ^= 1  # CRC
    p.write_bytes(bytes(bad))
    with pytest.raises(GzipDataError, match="corrupt"):
        _read_whole(p, len(big_payload))
    p.write_bytes(data)
    with pytest.raises(GzipDataError, match="truncated"):  # asks for more than the stream holds
        _read_whole(p, len(big_payload) + 5)
    with pytest.raises(RuntimeError, match="checkpoints"), gzip_stream.open_whole_stream(p) as r:
        r.checkpoint()


def test_whole_volume_read_falls_back_where_the_parallel_reader_fails(tmp_path, parallel):
    """Zero padding after the last gzip member (gzip(1) accepts it, rapidgzip does not):
    the sequential reader reads the file again and the voxels come out right; a truly
    corrupt file still fails with one line."""
    import nibabel as nib

    from kidedge.errors import KidedgeError
    from kidedge.io import load_scan

    vol = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    p = tmp_path / "z.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    data = p.read_bytes()
    p.write_bytes(data + b"\0" * 64)
    assert np.array_equal(np.asarray(load_scan(p).native), vol)
    bad = bytearray(data)
    bad[-7] ^= 1
    p.write_bytes(bytes(bad))
    with pytest.raises(KidedgeError, match="corrupt"):
        load_scan(p).native  # noqa: B018
