"""KiTS kidneys split into sides and moved into a body: exact copies, mirrors, turns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kidedge.errors import KidedgeError
from kidedge.phantom import transplant as TP
from tests.phantom.conftest import save_canonical, tiny_kits

SP = (3.0, 3.0, 3.0)


def test_sides_and_pieces():
    pieces = TP.pieces_of(tiny_kits(), SP)
    assert [p.side for p in pieces] == [-1, 1]
    right, left = pieces
    assert right.counts["tumour"] > 0 and right.counts["cyst"] == 0
    assert left.counts["cyst"] > 0 and left.counts["tumour"] == 0
    assert abs(right.axis[0]) > 0.9  # long axis along the slices
    one = TP.pieces_of(tiny_kits(one_side=True), SP)
    assert [p.side for p in one] == [-1]
    with pytest.raises(KidedgeError, match="not a KiTS label"):
        TP.pieces_of(np.full((4, 4, 4), 7, np.uint8), SP)


def test_placing_without_turn_or_mirror_copies_the_voxels_exactly():
    piece = TP.pieces_of(tiny_kits(), SP)[0]
    shape = (70, 90, 90)
    shift = np.array([11, 7, 23])
    box, out = TP.place_piece(piece, piece.centroid + shift * 3.0, piece.axis, piece.side, SP, shape)
    grid = np.zeros(shape, np.uint8)
    grid[box] = out
    expected = np.zeros(shape, np.uint8)
    n = piece.labels.shape
    expected[shift[0]:shift[0] + n[0], shift[1]:shift[1] + n[1], shift[2]:shift[2] + n[2]] = piece.labels
    assert np.array_equal(grid, expected)


def test_other_side_is_mirrored_and_turns_are_limited():
    piece = TP.pieces_of(tiny_kits(), SP)[0]  # right kidney, tumour at its lateral side
    shape = (70, 90, 90)
    target = piece.centroid + np.array([15.0, 15.0, 60.0])
    box, out = TP.place_piece(piece, target, piece.axis, +1, SP, shape)
    grid = np.zeros(shape, np.uint8)
    grid[box] = out
    tum = np.argwhere(grid == 2).mean(0)[2] * SP[2]
    kid = np.argwhere(grid == 1).mean(0)[2] * SP[2]
    src_tum = np.argwhere(piece.labels == 2).mean(0)[2]
    src_kid = np.argwhere(piece.labels == 1).mean(0)[2]
    assert np.sign(tum - kid) == -np.sign(src_tum - src_kid)  # lateral stays lateral
    counts = np.bincount(grid.ravel(), minlength=3)
    assert counts[2] == piece.counts["tumour"] and counts[1] == piece.counts["kidney"]
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([math.cos(math.radians(60)), math.sin(math.radians(60)), 0.0])
    turned = TP._turn(a, b, 30.0) @ a
    assert math.degrees(math.acos(np.clip(turned @ b, -1, 1))) == pytest.approx(30.0, abs=1e-6)


def test_load_kidney_source_reads_any_orientation(tmp_path):
    lab = tiny_kits()
    path = save_canonical(lab, SP, tmp_path / "case_00007" / "segmentation.nii.gz", ("R", "A", "S"))
    src = TP.load_kidney_source(path, "kits/case_00007")
    assert src.name == "kits/case_00007" and len(src.pieces) == 2
    assert sum(p.counts["cyst"] for p in src.pieces) == int((lab == 3).sum())
    empty = save_canonical(np.zeros((8, 8, 8), np.uint8), SP, tmp_path / "e" / "segmentation.nii.gz")
    with pytest.raises(KidedgeError, match="no kidney"):
        TP.load_kidney_source(empty)
