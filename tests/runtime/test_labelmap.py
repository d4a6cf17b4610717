"""SparseLabels and the streaming label writer: same file as the dense writer, any orientation."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.io import load_scan, save_segmentation
from kidedge.io.writer import save_segmentation_planes as save_sparse_segmentation
from kidedge.postprocess import class_volumes_ml
from kidedge.runtime.labelmap import SparseLabels, box_affine

from .synthetic import kits_affine, make_ct, write_nifti


def _random_labels(shape, rng, box=((5, 15), (10, 40), (20, 50))):
    lab = np.zeros(shape, np.uint8)
    (s0, s1), (r0, r1), (c0, c1) = box
    lab[s0:s1, r0:r1, c0:c1] = rng.integers(0, 4, size=(s1 - s0, r1 - r0, c1 - c0)).astype(np.uint8)
    return lab


def test_sparse_labels_round_trip_and_box(rng):
    dense = _random_labels((24, 64, 64), rng)
    store = SparseLabels(dense.shape)
    for a in range(0, 24, 4):
        store.write(a, dense[a:a + 4])
    assert np.array_equal(store.to_dense(), dense)
    nz = np.argwhere(dense)
    assert store.box() == tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(nz.min(0), nz.max(0), strict=True))
    assert np.array_equal(store.nonempty(), dense.any(axis=(1, 2)))
    assert len(store) == int(dense.any(axis=(1, 2)).sum())
    assert store.nbytes < dense.nbytes / 3  # only the labelled crops are held
    box = (slice(3, 20), slice(0, 30), slice(30, 64))
    assert np.array_equal(store.dense_box(box), dense[box])


def test_sparse_labels_overwrite_offset_and_assign(rng):
    store = SparseLabels((10, 32, 32))
    store.write(2, np.ones((3, 8, 8), np.uint8), row0=4, col0=20)
    assert store.box() == (slice(2, 5), slice(4, 12), slice(20, 28))
    store.write(3, np.zeros((1, 8, 8), np.uint8), row0=4, col0=20)  # a later write replaces the slice
    assert np.array_equal(store.nonempty().nonzero()[0], [2, 4])
    box = store.box()
    store.assign_box(box, np.zeros_like(store.dense_box(box)))
    assert store.box() is None and store.to_dense().sum() == 0
    with pytest.raises(ValueError):
        store.write(9, np.ones((2, 4, 4), np.uint8))  # beyond the last slice
    store.write(0, np.ones((1, 2, 2), np.uint8))
    with pytest.raises(ValueError):
        store.assign_box((slice(5, 6), slice(0, 2), slice(0, 2)), np.zeros((1, 2, 2), np.uint8))


def _decompressed(path):
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


@pytest.mark.parametrize("layout", ["kits", "ras", "lps_perm", "4d", "nii"])
def test_streamed_file_equals_dense_writer(tmp_path, rng, layout):
    hu, _ = make_ct(shape=(12, 40, 48), kidney_slices=(3, 9))
    canon_affine = kits_affine((2.5, 0.8, 0.7))
    img = nib.Nifti1Image(hu, canon_affine)
    if layout == "ras":
        img = nib.as_closest_canonical(img)
    elif layout == "lps_perm":
        # (y, z, x)-ordered array with L/P/S codes: a permutation and mixed flips
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(canon_affine),
                                               nib.orientations.axcodes2ornt(("P", "S", "L")))
        img = img.as_reoriented(ornt)
    data = np.asarray(img.dataobj).astype(np.int16)
    if layout == "4d":
        data = data[..., None]
    ext = ".nii" if layout == "nii" else ".nii.gz"
    src = tmp_path / f"ct{ext}"
    out_img = nib.Nifti1Image(np.ascontiguousarray(data), img.affine)
    out_img.header.set_xyzt_units("mm", "sec")
    nib.save(out_img, str(src))
    scan = load_scan(src)
    labels = _random_labels(scan.shape, rng, box=((2, 10), (5, 30), (10, 40)))
    store = SparseLabels(scan.shape)
    store.write(0, labels)
    dense_out = save_segmentation(labels, scan, tmp_path / f"dense{ext}")
    sparse_out = save_sparse_segmentation(store, scan, tmp_path / f"sparse{ext}")
    assert _decompressed(sparse_out) == _decompressed(dense_out)
    back = nib.load(str(sparse_out))
    assert back.shape == nib.load(str(src)).shape
    assert np.allclose(back.affine, nib.load(str(src)).affine)
    assert np.array_equal(load_scan(sparse_out).array, labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("where", ["none", "edges", "one_voxel"])
def test_streamed_file_equals_dense_writer_for_boxes_at_the_edges(tmp_path, where):
    """No labels, labels touching every face of the volume, one voxel: the planes before,
    inside and after the box (the reused plane buffer is cleared after it)."""
    hu, _ = make_ct(shape=(10, 24, 32), kidney_slices=(3, 7))
    src = write_nifti(tmp_path / "ct.nii.gz", hu, kits_affine())
    scan = nib.as_closest_canonical(nib.load(str(src)))  # RAS on disk: flips on two axes
    nib.save(scan, str(tmp_path / "ras.nii.gz"))
    scan = load_scan(tmp_path / "ras.nii.gz")
    labels = np.zeros(scan.shape, np.uint8)
    if where == "edges":
        labels[0, 0, 5] = labels[-1, -1, 7] = labels[4, 10, 0] = labels[5, 3, -1] = 2
    elif where == "one_voxel":
        labels[6, 11, 13] = 3
    store = SparseLabels(scan.shape)
    store.write(0, labels)
    dense_out = save_segmentation(labels, scan, tmp_path / "dense.nii.gz")
    sparse_out = save_sparse_segmentation(store, scan, tmp_path / "sparse.nii.gz")
    assert _decompressed(sparse_out) == _decompressed(dense_out)
    assert np.array_equal(load_scan(sparse_out).array, labels)


def test_streaming_writer_refuses_like_the_dense_one(tmp_path):
    hu, _ = make_ct(shape=(6, 16, 16), kidney_slices=(2, 4))
    src = write_nifti(tmp_path / "ct.nii.gz", hu, kits_affine())
    scan = load_scan(src)
    with pytest.raises(KidedgeError, match="input scan"):
        save_sparse_segmentation(SparseLabels(scan.shape), scan, src)
    with pytest.raises(KidedgeError, match="do not match"):
        save_sparse_segmentation(SparseLabels((5, 16, 16)), scan, tmp_path / "o.nii.gz")
    with pytest.raises(KidedgeError, match="nii"):
        save_sparse_segmentation(SparseLabels(scan.shape), scan, tmp_path / "o.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_volumes_of_the_box_equal_volumes_of_the_whole(rng):
    dense = np.zeros((30, 40, 50), np.uint8)
    dense[5:12, 3:15, 4:20] = 1  # one kidney on each side
    dense[6:9, 5:9, 6:10] = 2
    dense[15:25, 20:35, 30:45] = 1
    dense[17:20, 22:26, 33:36] = 3
    affine = kits_affine((2.0, 0.8, 0.7))
    affine[:3, 3] = [12.0, -40.0, 30.0]
    store = SparseLabels(dense.shape)
    store.write(0, dense)
    box = store.box()
    whole = class_volumes_ml(dense, (2.0, 0.8, 0.7), affine=affine)
    part = class_volumes_ml(store.dense_box(box), (2.0, 0.8, 0.7), affine=box_affine(affine, box))
    assert part == whole
    assert whole["sides"]["left"]["components"] >= 1 and whole["sides"]["right"]["components"] >= 1
