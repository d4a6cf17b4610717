"""SlabReader: the same voxels as the whole canonical array, with context, every strategy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import SlabReader, load_scan
from tests.io.conftest import kits19_affine, lps_affine, random_volume, ras_affine, write_nifti

# (file name, native shape, affine, strategy expected for order="ascending")
CASES = [
    ("ras.nii", (9, 11, 23), ras_affine(), "pread"),
    ("ras.nii.gz", (9, 11, 23), ras_affine(), "gzip-indexed"),
    ("lps.nii.gz", (9, 11, 23), lps_affine(), "gzip-indexed"),
    ("kits.nii.gz", (23, 11, 9), kits19_affine(), "whole"),
    ("kits.nii", (23, 11, 9), kits19_affine(), "whole"),
]


def _inferior_first_affine():
    # slice axis last and stored top-down (z towards I): canonical order is file order
    a = ras_affine()
    a[2, 2] = -a[2, 2]
    return a


CASES.append(("down.nii.gz", (9, 11, 23), _inferior_first_affine(), "gzip-stream"))


def _expected_slab(canonical, start, stop, context):
    idx = np.clip(np.arange(start - context, stop + context), 0, canonical.shape[0] - 1)
    return canonical[idx]


@pytest.mark.parametrize("name,shape,affine,strategy", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("context", [0, 1, 3])
def test_slabs_equal_the_whole_array(tmp_path, name, shape, affine, strategy, context):
    src = write_nifti(tmp_path / name, random_volume(shape, seed=3), affine)
    whole = np.array(load_scan(src).array)
    reader = SlabReader(load_scan(src), slab_size=5, context=context)
    assert reader.strategy == strategy
    seen = []
    for slab in reader:
        assert slab.array.flags.c_contiguous and slab.array.dtype == np.int16
        np.testing.assert_array_equal(slab.array, _expected_slab(whole, slab.start, slab.stop, context))
        np.testing.assert_array_equal(slab.core, whole[slab.start : slab.stop])
        seen.append((slab.start, slab.stop))
    assert seen == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    if strategy != "whole":
        assert not reader.scan.is_loaded  # streamed: the whole volume was never read


@pytest.mark.parametrize("name", ["ras.nii.gz", "ras.nii"])
def test_file_order_streams_backwards_in_one_pass(tmp_path, name):
    src = write_nifti(tmp_path / name, random_volume((9, 11, 23)), ras_affine())
    whole = np.array(load_scan(src).array)
    reader = SlabReader(load_scan(src), slab_size=4, context=2, order="file")
    assert reader.descending
    assert reader.strategy in ("gzip-stream", "pread")
    starts = []
    for slab in reader:
        np.testing.assert_array_equal(slab.array, _expected_slab(whole, slab.start, slab.stop, 2))
        starts.append(slab.start)
    assert starts == sorted(starts, reverse=True) and starts[-1] == 0


def test_slabs_do_not_share_memory(tmp_path):
    src = write_nifti(tmp_path / "a.nii.gz", random_volume((9, 11, 23)), ras_affine())
    slabs = list(SlabReader(load_scan(src), slab_size=4, context=1))
    for a, b in zip(slabs, slabs[1:], strict=False):
        assert not np.shares_memory(a.array, b.array)


def test_start_stop_range_keeps_outside_context(tmp_path):
    src = write_nifti(tmp_path / "a.nii.gz", random_volume((9, 11, 23)), _inferior_first_affine())
    whole = np.array(load_scan(src).array)
    slabs = list(SlabReader(load_scan(src), slab_size=4, context=2, start=6, stop=15))
    assert [(s.start, s.stop) for s in slabs] == [(6, 10), (10, 14), (14, 15)]
    for s in slabs:
        np.testing.assert_array_equal(s.array, _expected_slab(whole, s.start, s.stop, 2))


def test_big_endian_streaming(tmp_path):
    vol = random_volume((9, 11, 23))
    img = nib.Nifti1Image(vol.astype(">i2"), ras_affine())
    img.set_data_dtype(np.dtype(">i2"))
    nib.save(img, str(tmp_path / "be.nii.gz"))
    whole = np.array(load_scan(tmp_path / "be.nii.gz").array)
    for order in ("ascending", "file"):
        for slab in SlabReader(load_scan(tmp_path / "be.nii.gz"), slab_size=5, context=2, order=order):
            assert slab.array.dtype.isnative
            np.testing.assert_array_equal(slab.array, _expected_slab(whole, slab.start, slab.stop, 2))


def test_corrupt_gzip_data_is_reported_while_streaming(tmp_path):
    src = write_nifti(tmp_path / "a.nii.gz", random_volume((32, 32, 40), seed=5), _inferior_first_affine())
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # damage the middle; the trailer still matches
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    scan = load_scan(bad)  # cheap checks pass
    with pytest.raises(KidedgeError, match="corrupt|truncated") as info:
        for _ in SlabReader(scan, slab_size=4):
            pass
    assert str(bad) in str(info.value)


def test_float_streaming_keeps_dtype(tmp_path):
    vol = random_volume((9, 11, 23)).astype(np.float32) + 0.5  # not integers: stays float
    src = write_nifti(tmp_path / "f.nii", vol, ras_affine())
    scan = load_scan(src)
    slabs = list(SlabReader(scan, slab_size=8))
    assert all(s.array.dtype == np.float32 for s in slabs)
    np.testing.assert_array_equal(np.concatenate([s.core for s in slabs]), scan.array)


class _CountingReads:
    """Counts the bytes decompressed by every GzipReader (skips included)."""

    def __init__(self, monkeypatch):
        from kidedge.io import gzip_stream

        self.total = 0
        original = gzip_stream.GzipReader.readinto

        def counting(reader, buffer):
            n = original(reader, buffer)
            self.total += n
            return n

        monkeypatch.setattr(gzip_stream.GzipReader, "readinto", counting)


@pytest.mark.parametrize("affine", [_inferior_first_affine(), ras_affine()], ids=["stream", "indexed"])
def test_second_pass_over_a_region_decompresses_only_that_region(tmp_path, monkeypatch, affine):
    shape = (16, 16, 64)  # 64 slices of 512 bytes
    src = write_nifti(tmp_path / "a.nii.gz", random_volume(shape, seed=7), affine)
    whole = np.array(load_scan(src).array)
    plane = 16 * 16 * 2
    scan = load_scan(src)
    counter = _CountingReads(monkeypatch)
    first = list(SlabReader(scan, slab_size=8, context=1))
    first_pass = counter.total
    assert first_pass >= 64 * plane
    counter.total = 0
    roi = list(SlabReader(scan, slab_size=4, context=1, start=40, stop=47))
    assert [(s.start, s.stop) for s in roi] == [(40, 44), (44, 47)]
    for s in roi + first:
        np.testing.assert_array_equal(s.array, _expected_slab(whole, s.start, s.stop, 1))
    # from the restart point at slice 32 (or 24 going backwards) up to slice 48: at most
    # 16 slices plus the context, far from the 64 of a full pass
    assert counter.total <= 18 * plane
    assert counter.total < first_pass / 3


@pytest.mark.parametrize("name,shape,affine,strategy", CASES, ids=[c[0] for c in CASES])
def test_cropped_slabs_equal_the_crop_of_the_whole_array(tmp_path, name, shape, affine, strategy):
    vol = random_volume(shape, np.int16, seed=5)
    path = write_nifti(tmp_path / name, vol, affine)
    canonical = load_scan(path).array
    rows, cols = (2, 9), (1, 4)
    got = list(SlabReader(load_scan(path), slab_size=4, context=1, start=3, rows=rows, cols=cols))
    assert got[0].start == 3
    for slab in got:
        expect = _expected_slab(canonical, slab.start, slab.stop, 1)[:, rows[0]:rows[1], cols[0]:cols[1]]
        np.testing.assert_array_equal(slab.array, expect)
        assert slab.array.flags.c_contiguous
    with pytest.raises(ValueError, match="rows"):
        SlabReader(load_scan(path), rows=(0, 999))


@pytest.mark.parametrize("name", ["kits.nii.gz", "ras.nii"])
def test_gather_slices_equals_fancy_indexing(tmp_path, name):
    from kidedge.io.slabs import gather_slices

    shape, affine = ((23, 11, 9), kits19_affine()) if name.startswith("kits") else ((9, 11, 23), ras_affine())
    path = write_nifti(tmp_path / name, random_volume(shape, np.int16, seed=6), affine)
    scan = load_scan(path)
    idx = [0, 8, 16, 16, scan.shape[0] - 1]
    got = gather_slices(scan, idx, rows=(1, 10))
    np.testing.assert_array_equal(got, scan.array[idx][:, 1:10])
    assert got.flags.c_contiguous
