"""kidedge.kidney_review (post-processing a radiologist would expect) on synthetic label maps
with known anatomy, and on real KiTS19 label maps (shared data)."""

import numpy as np
import pytest

from kidedge.body_landmarks import BodyLandmarks
from kidedge.kidney_review import (
    MASS_MIN_CONTACT_FRACTION,
    MASS_MIN_ML,
    MASS_MIN_SPHERICITY,
    PIECE_ML,
    review_segmentation,
)
from kidedge.postprocess import postprocess_labels

SPACING = (3.0, 1.0, 1.0)
SHAPE = (40, 200, 300)
# KiTS19-like: (slice, row, col) -> x = -col (columns toward the patient's left), y = -row, z = -3 slice
AFFINE = np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
VOXEL_ML = 3.0 / 1000
RIGHT_COL, LEFT_COL, KIDNEY_ROW = 90, 210, 125  # the patient's right is at low columns


def ellipsoid(lab, value, centre, radii_mm):
    """Set an axis-aligned ellipsoid (centre in voxels, semi-axes in mm) to ``value``."""
    k, r, c = np.ogrid[:lab.shape[0], :lab.shape[1], :lab.shape[2]]
    d = sum(((g - c0) * sp / rad) ** 2 for g, c0, sp, rad in zip((k, r, c), centre, SPACING, radii_mm, strict=True))
    lab[d <= 1] = value


def normal_pair():
    lab = np.zeros(SHAPE, np.uint8)
    ellipsoid(lab, 1, (20, KIDNEY_ROW, RIGHT_COL), (45, 25, 25))  # ~118 mL each
    ellipsoid(lab, 1, (20, KIDNEY_ROW, LEFT_COL), (45, 25, 25))
    return lab


def landmarks(n=SHAPE[0]):
    """A body from row 20 to 180 and column 10 to 290, the spine at row 140, column 150."""
    body = np.tile([20.0, 180.0, 10.0, 290.0], (n, 1))
    spine = np.tile([140.0, 150.0], (n, 1))
    return BodyLandmarks(AFFINE, body, spine)


def ml(lab, value=None):
    return float(np.count_nonzero(lab > 0 if value is None else lab == value)) * VOXEL_ML


def test_a_normal_pair_with_a_renal_tumour_is_left_alone():
    lab = normal_pair()
    ellipsoid(lab, 2, (20, KIDNEY_ROW, LEFT_COL + 25), (15, 15, 15))  # exophytic, half outside the kidney
    before = lab.copy()
    out, volumes, warnings, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(out, lab)
    np.testing.assert_array_equal(lab, before)  # input untouched
    assert out.dtype == np.uint8 and warnings == []
    assert findings["midline_from"] == "spine"
    assert volumes["sides"]["left"]["tumour_ml"] == pytest.approx(ml(lab, 2))
    assert volumes["sides"]["right"]["kidney_ml"] == pytest.approx(ml(lab[:, :, :150]))
    assert [m["kept"] for m in findings["masses"]] == [True]
    assert findings["masses"][0]["contact_fraction"] > 0.2


def test_a_mass_must_share_a_broad_face_with_kidney_and_be_round():
    from scipy import ndimage

    from kidedge.postprocess import _dilate26

    lab = normal_pair()
    # (a) a floating "tumour" (e.g. in the liver)
    ellipsoid(lab, 2, (20, 60, 60), (12, 12, 12))
    # (b) a cube meeting the right kidney's outermost voxel (20, 125, 65) at a corner only
    lab[21:25, 126:131, 60:65] = 2
    corner = np.zeros(SHAPE, bool)
    corner[21:25, 126:131, 60:65] = True
    assert not (ndimage.binary_dilation(lab == 1) & corner).any()  # no shared face...
    assert (_dilate26(lab == 1) & corner).any()  # ...but 26-neighbours: the old rule keeps it
    # (c) a large block of "tumour" (bowel, liver) reaching the left kidney through a thin stalk
    lab[5:35, 30:90, 215:275] = 2
    stalk = lab[8:10, 90:115, 215:217]  # from the block down to the kidney's front (rows 110-111)
    stalk[stalk == 0] = 2
    # (d) a 1-voxel sheet of "tumour" hugging the left kidney's front: broad contact, not a mass
    front = np.argmax(lab[12:29, :, 195:226] == 1, axis=1)  # first kidney row per (slice, col)
    for (i, j), row in np.ndenumerate(front):
        lab[12 + i, row - 1, 195 + j] = 3
    out, _, warnings, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(out, normal_pair())
    by_reason = {}
    for m in findings["masses"]:
        by_reason.setdefault(m["reason"], []).append(m)
    assert sorted(by_reason) == ["not touching kidney", "ragged, not a round mass", "thin contact with kidney"]
    assert len(by_reason["not touching kidney"]) == 2  # (a) and the corner-only cube (b)
    (thin,) = by_reason["thin contact with kidney"]
    assert thin["ml"] > 300 and 0 < thin["contact_fraction"] < MASS_MIN_CONTACT_FRACTION
    (sheet,) = by_reason["ragged, not a round mass"]
    assert sheet["ml"] >= 1 and sheet["contact_fraction"] > 0.2 and sheet["sphericity"] < MASS_MIN_SPHERICITY
    assert any(w.startswith("removed") and "tumour/cyst" in w for w in warnings)
    legacy = postprocess_labels(lab, SPACING)  # the old rule: (b), (c) and (d) touch kidney
    assert legacy[22, 128, 62] == 2 and legacy[10, 50, 250] == 2 and (legacy == 3).any()


def test_a_mass_under_half_a_millilitre_is_read_as_kidney():
    lab = normal_pair()
    ellipsoid(lab, 2, (20, KIDNEY_ROW, LEFT_COL + 25), (15, 15, 15))  # a real-sized tumour stays
    speck = (20, KIDNEY_ROW - 24, RIGHT_COL)  # a few voxels of "tumour" on the right kidney's front
    lab[speck[0]:speck[0] + 2, speck[1] - 3:speck[1] + 2, speck[2] - 4:speck[2] + 5] = 2
    cyst = (20, KIDNEY_ROW, RIGHT_COL)  # a 0.3 mL cyst inside the right kidney
    ellipsoid(lab, 3, cyst, (5, 4, 4))
    speck_ml, tumour_ml = ml(lab[:, :, :150], 2), ml(lab[:, :, 150:], 2)
    assert 0 < speck_ml < MASS_MIN_ML and 0 < ml(lab, 3) < MASS_MIN_ML and tumour_ml > 10
    out, volumes, warnings, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    assert out[speck] == 1 and out[cyst] == 1  # parenchyma now, not background
    assert ml(out, 3) == 0 and ml(out[:, :, :150], 2) == 0 and ml(out[:, :, 150:], 2) == tumour_ml
    assert ml(out) == ml(lab)  # the kidney keeps its volume
    small = [m for m in findings["masses"] if not m["kept"]]
    assert len(small) == 2 and {m["became"] for m in small} == {"kidney"}
    assert all(m["reason"] == f"under {MASS_MIN_ML:g} mL" for m in small)
    assert volumes["sides"]["right"]["masses_ml"] == 0
    assert not any("tumour/cyst" in w for w in warnings)  # nothing was removed


def test_pieces_and_second_objects_on_one_side():
    lab = normal_pair()
    far_speck = (5, 30, 270)
    lab[far_speck[0]:far_speck[0] + 2, far_speck[1]:far_speck[1] + 10, far_speck[2]:far_speck[2] + 10] = 1  # 0.6 mL
    ellipsoid(lab, 1, (20, KIDNEY_ROW, LEFT_COL + 45), (15, 12, 12))  # ~9 mL, 8 mm beside the left kidney
    ellipsoid(lab, 1, (20, 70, RIGHT_COL), (18, 10, 15))  # ~11 mL, 20 mm in front of the right kidney
    out, _, warnings, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    assert out[far_speck] == 0
    assert out[20, KIDNEY_ROW, LEFT_COL + 45] == 1  # the piece near its kidney stays
    assert out[20, 70, RIGHT_COL] == 0
    reasons = {c["reason"] for c in findings["components"] if not c["kept"]}
    assert f"a piece under {PIECE_ML:.2g} mL apart from the kidneys" in reasons
    assert "a second object on the right side, apart from that side's kidney" in reasons
    assert any("second object on the right side" in w for w in warnings)


def test_position_beside_the_spine():
    lab = normal_pair()
    ellipsoid(lab, 1, (20, 35, LEFT_COL - 20), (60, 30, 30))  # front of the abdomen, bigger than the kidney
    ellipsoid(lab, 1, (20, 172, 160), (15, 6, 10))  # behind the spine (row 172 = 32 mm behind it)
    out, volumes, warnings, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(out, normal_pair())
    reasons = {c["reason"] for c in findings["components"] if not c["kept"]}
    assert reasons == {"not where a kidney lies (in the front of the abdomen)",
                       "not where a kidney lies (behind the spine)"}
    # without landmarks the bigger front object would pass for the left kidney
    blind = review_segmentation(lab, SPACING, AFFINE).labels
    assert blind[20, 35, LEFT_COL - 20] == 1 and blind[20, KIDNEY_ROW, LEFT_COL] == 0
    assert volumes["sides"]["left"]["kidney_ml"] == pytest.approx(ml(normal_pair()[:, :, 150:]))


def test_outside_the_body_and_in_the_flank_wall():
    lab = normal_pair()
    lab[17:23, 186:192, 100:160] = 1  # 6.5 mL below the body's posterior edge (row 180): the table
    ellipsoid(lab, 1, (20, 110, 285), (12, 8, 8))  # at the body's left edge (column 290)
    out, _, _, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(out, normal_pair())
    reasons = {c["reason"] for c in findings["components"] if not c["kept"]}
    assert reasons == {"not where a kidney lies (outside the body)", "not where a kidney lies (in the flank wall)"}


def test_horseshoe_kidney_is_kept_split_at_the_midline_and_warned():
    lab = normal_pair()
    ellipsoid(lab, 1, (30, KIDNEY_ROW - 10, 150), (25, 12, 70))  # an isthmus joining the lower poles
    out, volumes, warnings, findings = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(out, lab)
    assert [c["side"] for c in findings["components"]] == ["both"]
    assert volumes["sides"]["right"]["kidney_ml"] == pytest.approx(ml(lab[:, :, :151]))
    assert volumes["sides"]["left"]["kidney_ml"] == pytest.approx(ml(lab[:, :, 151:]))
    assert any("crosses the midline" in w for w in warnings)


def test_no_ratio_rule_between_the_two_kidneys():
    # KiTS23 has a normal 193 mL kidney opposite a 2674 mL one (ratio 0.07)
    lab = np.zeros(SHAPE, np.uint8)
    ellipsoid(lab, 1, (20, KIDNEY_ROW, RIGHT_COL), (32, 20, 20))  # ~54 mL
    ellipsoid(lab, 1, (20, KIDNEY_ROW - 20, LEFT_COL + 10), (59, 60, 60))  # ~890 mL kidney...
    ellipsoid(lab, 2, (20, KIDNEY_ROW - 20, LEFT_COL + 10), (50, 50, 50))  # ...mostly tumour
    assert ml(lab[:, :, :150]) < 0.1 * ml(lab[:, :, 150:])
    out, volumes, warnings, _ = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(out, lab)
    assert any("tumour and cyst are" in w and "left kidney" in w for w in warnings)
    assert not (postprocess_labels(lab, SPACING)[:, :, :150]).any()  # the old 10 % rule drops the small kidney


def test_warnings_for_the_reader():
    empty = review_segmentation(np.zeros(SHAPE, np.uint8), SPACING, AFFINE, landmarks())
    assert empty.warnings == ["no kidney found"]
    one = normal_pair()
    one[:, :, :150] = 0
    w = review_segmentation(one, SPACING, AFFINE, landmarks()).warnings
    assert len(w) == 1 and w[0].startswith("only one kidney found (left") and "no right kidney" in w[0]
    small = np.zeros(SHAPE, np.uint8)
    ellipsoid(small, 1, (20, KIDNEY_ROW, RIGHT_COL), (20, 15, 15))  # ~19 mL
    ellipsoid(small, 1, (20, KIDNEY_ROW, LEFT_COL), (45, 25, 25))
    ellipsoid(small, 3, (20, KIDNEY_ROW, LEFT_COL + 22), (8, 8, 8))  # a cyst on the left
    ellipsoid(small, 2, (20, KIDNEY_ROW, RIGHT_COL - 12), (6, 6, 6))  # a tumour on the right
    w = review_segmentation(small, SPACING, AFFINE, landmarks()).warnings
    assert any(s.startswith("right kidney") and "under 50 mL" in s for s in w)
    assert any("both kidneys" in s for s in w)
    # the runtime hands a box: a kidney reaching the scan's first slice is cut by the field of view
    pair = normal_pair()[8:33]
    w = review_segmentation(pair, SPACING, AFFINE, None, box_start=(0, 0, 0), scan_shape=(25, 200, 300)).warnings
    assert any("cut by the first or last slice (left, right)" in s for s in w)
    w = review_segmentation(pair, SPACING, AFFINE, None, box_start=(10, 0, 0), scan_shape=(60, 200, 300)).warnings
    assert w == []


def test_small_scale_kidneys_are_not_pieces():
    # both kidneys of a few mL (the poles at the edge of a scan, a test fixture): kept, warned
    lab = np.zeros(SHAPE, np.uint8)
    ellipsoid(lab, 1, (20, KIDNEY_ROW, RIGHT_COL), (6, 8, 8))  # ~1.6 mL
    ellipsoid(lab, 1, (20, KIDNEY_ROW, LEFT_COL), (6, 7, 7))
    lab[2, 20, 20] = 1  # one voxel: a piece even at this scale
    out, _, warnings, _ = review_segmentation(lab, SPACING, AFFINE)
    assert np.count_nonzero(out != lab) == 1 and out[2, 20, 20] == 0
    assert sum("under 50 mL" in w for w in warnings) == 2


def test_postprocess_exposes_the_same_review():
    from kidedge import postprocess

    lab = normal_pair()
    ellipsoid(lab, 2, (20, 60, 60), (12, 12, 12))
    a = postprocess.review_segmentation(lab, SPACING, AFFINE, landmarks())
    b = review_segmentation(lab, SPACING, AFFINE, landmarks())
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.warnings == b.warnings and a.volumes == b.volumes


@pytest.mark.shared_data
def test_real_masses_nearest_the_thresholds_are_kept():
    """Truth label maps of real patients: the three real masses nearest the thresholds (KiTS19
    case 30: contact 0.077; KiTS23 case 430: contact 0.049, 2591 mL; KiTS23 case 470:
    sphericity 0.297) and their kidneys must come through untouched."""
    from pathlib import Path

    from kidedge.io import load_label_map

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "kits19-labels").is_dir() or not (root / "kits23-labels").is_dir():
        pytest.skip("../shared/data/kits19-labels or kits23-labels is not available")
    for case in ("kits19-labels/case_00030", "kits23-labels/case_00430", "kits23-labels/case_00470"):
        labels, scan = load_label_map(root / case / "segmentation.nii.gz")
        labels = np.asarray(labels, np.uint8)
        out, _, _, findings = review_segmentation(labels, scan.spacing, scan.canonical_affine)
        lost = [m for m in findings["masses"] if not m["kept"] and m["ml"] >= 1.0]
        gone = [c for c in findings["components"] if not c["kept"] and c["ml"] >= PIECE_ML]
        assert not lost and not gone, (case, lost, gone)
        # beyond specks under MASS_MIN_ML read as kidney (rule 1c), the truth stays as it was
        read_as_kidney = (labels >= 2) & (out == 1)
        assert all(m["ml"] < MASS_MIN_ML for m in findings["masses"] if m["became"] == "kidney"), case
        assert np.count_nonzero((out != labels) & ~read_as_kidney) * np.prod(scan.spacing) / 1000 < 1.0, case
        assert np.count_nonzero(read_as_kidney) * np.prod(scan.spacing) / 1000 < 2.0, case
        assert min(m["contact_fraction"] for m in findings["masses"] if m["ml"] >= 1.0) < 0.08 or "470" in case


def test_gap_between_components_equals_the_distance_transform():
    """gap_mm (surface voxels in a k-d tree) measures what a distance transform of the
    window measures: the shortest voxel-centre distance, with anisotropic spacing."""
    from scipy import ndimage

    from kidedge.component_geometry import gap_mm
    from kidedge.postprocess import label26

    rng = np.random.default_rng(5)
    spacing = (2.5, 0.8, 0.8)
    near = 0
    for _ in range(8):
        comp = np.zeros((20, 60, 60), np.int32)
        a0, b0 = rng.integers(2, 8, 3), rng.integers(10, 16, 3)
        comp[a0[0]:a0[0] + 5, a0[1]:a0[1] + 20, a0[2]:a0[2] + 15] = 1
        comp[b0[0]:b0[0] + 4, b0[1] + 20:b0[1] + 30, b0[2] + 20:b0[2] + 35] = 2
        comp[comp > 0] = label26(comp > 0)[0][comp > 0]
        ids = sorted(set(np.unique(comp)) - {0})
        if len(ids) != 2:
            continue
        info = {i: {"id": i, "lo": np.argwhere(comp == i).min(0), "hi": np.argwhere(comp == i).max(0)} for i in ids}
        dist = ndimage.distance_transform_edt(comp != ids[0], sampling=spacing)
        expect = float(dist[comp == ids[1]].min())
        got = gap_mm(info[ids[1]], info[ids[0]], comp, np.zeros(3, int), spacing, 15.0)
        if expect <= 15.0:  # within_mm: farther away only "farther than that" is promised
            near += 1
            assert got == pytest.approx(expect)
        else:
            assert got >= expect - 1e-9
    assert near >= 3


def test_components_described_a_few_slices_at_a_time_as_whole(monkeypatch):
    """The review describes each component's box a few slices at a time (memory): the
    findings equal those of one pass over the whole box, and match the voxels' own count,
    centroid, extent and leftness."""
    import kidedge.component_geometry as geometry

    lab = normal_pair()
    ellipsoid(lab, 1, (20, KIDNEY_ROW, LEFT_COL + 45), (15, 12, 12))
    ellipsoid(lab, 2, (30, KIDNEY_ROW, RIGHT_COL), (12, 10, 10))
    ellipsoid(lab, 1, (20, 70, RIGHT_COL), (18, 10, 15))
    runs = {}
    for slices in (1, 7, 10_000):
        monkeypatch.setattr(geometry, "DESCRIBE_SLICES", slices)
        ids, comps = geometry.describe_components(lab, np.array([3, 4, 5]), AFFINE, VOXEL_ML)
        runs[slices] = comps
    for c in runs[10_000]:
        pts = np.argwhere(ids == c["id"]) + [3, 4, 5]
        assert c["voxels"] == len(pts)
        np.testing.assert_array_equal(c["centroid"], pts.mean(axis=0))
        np.testing.assert_array_equal(c["lo"], pts.min(axis=0))
        np.testing.assert_array_equal(c["hi"], pts.max(axis=0))
        np.testing.assert_array_equal(c["lefts"], -(pts @ AFFINE[0, :3] + AFFINE[0, 3]))
    for slices in (1, 7):
        assert len(runs[slices]) == len(runs[10_000]) == 4
        for a, b in zip(runs[slices], runs[10_000], strict=True):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
