import numpy as np

from kidedge.runtime.gating import CascadeGate


def test_region_maps_lowres_hits_to_scan_pixels_with_margin():
    gate = CascadeGate((20, 128, 128), (2.5, 0.8, 0.8), [1, 2, 3], margin_mm=5.0)
    low = np.zeros((20, 32, 32), np.uint8)
    low[8:12, 10:12, 4:6] = 1       # low-res pixel = 4x4 scan pixels
    low[10:12, 20, 25] = 2          # a second region, big enough to count (2 >= 10% of 16)
    gate.add(0, low[:10])
    gate.add(10, low[10:])
    roi = gate.region()
    # slices 8..11 hit, margin 5 mm / 2.5 mm = 2 slices
    assert (roi.slice_start, roi.slice_stop) == (6, 14)
    # rows 10..20 (low) -> 40..84 (scan), margin ceil(5 / 0.8) = 7 pixels
    assert (roi.row_start, roi.row_stop) == (33, 91)
    assert (roi.col_start, roi.col_stop) == (16 - 7, 104 + 7)
    s = gate.stats()
    assert s["slices_run_stage2"] == 8 and s["skipped_slice_fraction"] == 0.6
    assert s["pixels_run_stage2"] == 8 * (91 - 33) * (111 - 9)
    assert s["slices_with_kidney_stage1"] == 4  # slices 8, 9, 10, 11


def test_labels_outside_roi_labels_are_ignored_and_box_is_clipped():
    gate = CascadeGate((6, 16, 16), (1.0, 1.0, 1.0), [1], margin_mm=100.0)
    low = np.zeros((6, 16, 16), np.uint8)
    low[0, 0, 0] = 2  # not an ROI label
    gate.add(0, low)
    assert gate.region() is None
    assert gate.stats()["skipped_pixel_fraction"] == 1.0
    low[5, 15, 15] = 1
    gate.add(0, low)
    roi = gate.region()
    assert (roi.slice_start, roi.slice_stop, roi.row_start, roi.row_stop, roi.col_start, roi.col_stop) == (0, 6, 0, 16, 0, 16)


def test_slice_only_gating_keeps_whole_slices():
    gate = CascadeGate((10, 16, 16), (1.0, 1.0, 1.0), [1], margin_mm=0.0, crop_in_plane=False)
    low = np.zeros((10, 8, 8), np.uint8)
    low[4, 3, 3] = 1
    gate.add(0, low)
    roi = gate.region()
    assert (roi.slice_start, roi.slice_stop, roi.row_start, roi.row_stop) == (4, 5, 0, 16)


def test_stray_stage1_specks_do_not_stretch_the_box():
    # Two kidneys on slices 30..49 and a one-pixel false positive on slice 2: the box
    # covers the kidneys only (before, the speck stretched it over the whole scan).
    gate = CascadeGate((80, 128, 128), (2.5, 0.8, 0.8), [1, 2, 3], margin_mm=5.0)
    low = np.zeros((80, 32, 32), np.uint8)
    low[30:50, 12:18, 6:10] = 1
    low[32:48, 12:18, 22:26] = 1
    low[2, 30, 30] = 1
    gate.add(0, low)
    roi = gate.region()
    assert (roi.slice_start, roi.slice_stop) == (28, 52)
    assert (roi.row_start, roi.row_stop) == (48 - 7, 72 + 7)
    s = gate.stats()
    assert s["slices_with_kidney_stage1"] == 21 and s["stage1_regions_dropped"] == 1
    assert s["slices_run_stage2"] == 24


def test_a_single_region_is_kept_whole():
    gate = CascadeGate((10, 16, 16), (1.0, 1.0, 1.0), [1], margin_mm=0.0)
    low = np.zeros((10, 16, 16), np.uint8)
    low[3:6, 4:8, 4:8] = 1
    gate.add(0, low)
    roi = gate.region()
    assert (roi.slice_start, roi.slice_stop, roi.row_start, roi.row_stop) == (3, 6, 4, 8)
    assert gate.stats()["stage1_regions_dropped"] == 0


def test_sampled_slices_connect_and_the_range_grows_by_one_step():
    # stage 1 saw every 4th slice: kidneys on sampled slices 32..48 and a speck on 4;
    # consecutive sampled slices are neighbours, so each kidney stays one region
    step = 4
    gate = CascadeGate((80, 128, 128), (2.5, 0.8, 0.8), [1, 2, 3], margin_mm=5.0, slice_step=step)
    low = np.zeros((80, 32, 32), np.uint8)
    low[30:50, 12:18, 6:10] = 1
    low[32:48, 12:18, 22:26] = 1
    low[4, 30, 30] = 1
    gate.add(0, low[0:40:step])
    gate.add(40, low[40:80:step])
    roi = gate.region()
    # hits on 32..48; the kidney may run up to 3 slices further each way, then 2 slices margin
    assert (roi.slice_start, roi.slice_stop) == (32 - 3 - 2, 48 + 1 + 3 + 2)
    assert (roi.row_start, roi.row_stop) == (48 - 7, 72 + 7)
    assert gate.stats()["stage1_regions_dropped"] == 1
    # every slice of the kidneys lies inside the region
    assert roi.slice_start <= 30 and roi.slice_stop >= 50


def test_localiser_step_in_slices():
    from kidedge.runtime.engine import localiser_step

    assert [localiser_step(mm, 4.0) for mm in (0.5, 0.8, 1.0, 2.0, 2.5, 3.0, 5.0)] == [8, 5, 4, 2, 1, 1, 1]
    assert localiser_step(0.5, 0.0) == 1  # 0: every slice


def test_the_unseen_slices_at_the_ends_give_the_every_slice_region():
    # stage 1 on every 4th slice, then on the unseen slices beyond the first and last hit:
    # the region is the one stage 1 on every slice gives (kidneys on 30..49, speck on 4)
    step = 4
    low = np.zeros((80, 32, 32), np.uint8)
    low[30:50, 12:18, 6:10] = 1
    low[32:48, 12:18, 22:26] = 1
    low[4, 30, 30] = 1
    every = CascadeGate((80, 128, 128), (2.5, 0.8, 0.8), [1, 2, 3], margin_mm=5.0)
    every.add(0, low)
    gate = CascadeGate((80, 128, 128), (2.5, 0.8, 0.8), [1, 2, 3], margin_mm=5.0, slice_step=step)
    gate.add(0, low[0:80:step])
    # hits on sampled slices 32..48: the unseen 29..31 below, 49..51 above
    assert gate.unseen_edges() == [(29, 32), (49, 52)]
    for a, b in gate.unseen_edges():
        gate.add(a, low[a:b], step=1)
    assert gate.region() == every.region()
    assert (gate.region().slice_start, gate.region().slice_stop) == (30 - 2, 50 + 2)
    assert gate.unseen_edges() == []  # the ends are seen now
    # at the scan's ends the unseen run stops at the first and last slice
    edge = CascadeGate((10, 16, 16), (1.0, 1.0, 1.0), [1], margin_mm=0.0, slice_step=4)
    hit = np.zeros((3, 16, 16), np.uint8)
    hit[:, 5, 5] = 1
    edge.add(1, hit)  # slices 1, 5, 9
    assert edge.unseen_edges() == [(0, 1)]
    empty = CascadeGate((10, 16, 16), (1.0, 1.0, 1.0), [1], margin_mm=0.0, slice_step=4)
    empty.add(0, np.zeros((3, 16, 16), np.uint8))
    assert empty.unseen_edges() == []


def test_a_segmenter_that_sees_the_scan_gets_its_box_grown_to_fill_its_input():
    """roi.context = "scan": the in-plane box grows (within the scan) until it resamples to
    the padded network size; slices are not touched; without it, the plain box."""
    from kidedge.preprocess import PreprocessSpec, output_size, padded_size

    spec = PreprocessSpec(in_plane="spacing", spacing_mm=1.25, pad_multiple=32)
    low = np.zeros((20, 32, 32), np.uint8)
    low[8:12, 10:14, 4:9] = 1
    plain = CascadeGate((20, 128, 128), (2.5, 0.8, 0.8), [1], margin_mm=5.0)
    grown = CascadeGate((20, 128, 128), (2.5, 0.8, 0.8), [1], margin_mm=5.0, fill_grid=spec)
    for g in (plain, grown):
        g.add(0, low)
    a, b = plain.region(), grown.region()
    assert (b.slice_start, b.slice_stop) == (a.slice_start, a.slice_stop)
    assert b.row_start <= a.row_start and b.row_stop >= a.row_stop
    assert b.col_start <= a.col_start and b.col_stop >= a.col_stop
    size_a = output_size(spec, (a.row_stop - a.row_start, a.col_stop - a.col_start), (0.8, 0.8))
    size_b = output_size(spec, (b.row_stop - b.row_start, b.col_stop - b.col_start), (0.8, 0.8))
    assert padded_size(spec, size_b) == padded_size(spec, size_a) == size_b  # no padding left
    assert size_a != size_b
