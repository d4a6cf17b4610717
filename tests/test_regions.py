"""kidedge.regions: the KiTS regions, bounding boxes and the ROI rule, shared by training,
the runtime's cascade gate, export and the metrics."""

import numpy as np
import pytest

from kidedge import regions
from kidedge.metrics import hierarchical_dice
from kidedge.train.roi import label_box


def test_region_mask_fast_paths_equal_isin():
    labels = np.random.default_rng(0).integers(0, 4, (6, 7, 8)).astype(np.uint8)
    for values in (*regions.KITS21_REGIONS.values(), *regions.KITS19_REGIONS.values()):
        np.testing.assert_array_equal(regions.region_mask(labels, values), np.isin(labels, values))


def test_bounding_box_grow_and_union():
    mask = np.zeros((10, 12, 14), bool)
    assert regions.bounding_box(mask) is None
    mask[2:4, 5:9, 1:2] = True
    box = regions.bounding_box(mask)
    assert box == (slice(2, 4), slice(5, 9), slice(1, 2))
    assert regions.grow_box(box, mask.shape, (1, 2, 3)) == (slice(1, 5), slice(3, 11), slice(0, 5))
    assert regions.grow_box(box, mask.shape, 20) == (slice(0, 10), slice(0, 12), slice(0, 14))
    assert regions.union_box(box, None) == box
    assert regions.union_box(box, (slice(0, 1), slice(9, 10), slice(3, 4))) == (slice(0, 4), slice(5, 10), slice(1, 4))


def test_roi_box_margin_is_rounded_up_per_axis():
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[8:10, 10:12, 14:16] = 2
    # 5 mm on 2.5 mm slices is 2 slices; on 0.8 mm pixels 6.25 -> 7 pixels
    box = regions.roi_box(labels, regions.ROI_LABELS, (2.5, 0.8, 0.8), 5.0)
    assert box == (slice(6, 12), slice(3, 19), slice(7, 23))
    assert regions.roi_box(labels, (1,), (2.5, 0.8, 0.8), 5.0) is None
    assert regions.margin_voxels((2.0, 0.0, 1.0), 3.0) == (2, 0, 3)
    # training's six-integer boxes are the same rule
    assert label_box(labels, [1, 2, 3], (2.5, 0.8, 0.8), 5.0) == (6, 12, 3, 19, 7, 23)


def test_hierarchical_dice_and_empty_regions():
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[1:3, 2:6, 2:6] = 1
    truth[1:3, 3:5, 3:5] = 2
    pred = truth.copy()
    pred[1:3, 3:5, 3:5] = 1  # the tumour called kidney
    d = hierarchical_dice(pred, truth)
    assert d["kidney"] == 1.0 and d["masses"] == 0.0 and d["tumour"] == 0.0
    empty = np.zeros_like(truth)
    assert hierarchical_dice(empty, empty) == {"kidney": 1.0, "masses": 1.0, "tumour": 1.0}
    assert hierarchical_dice(empty, empty, empty=None) == {"kidney": None, "masses": None, "tumour": None}
    with pytest.raises(Exception, match="shape"):
        hierarchical_dice(empty, empty[:1])
