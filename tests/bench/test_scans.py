"""Benchmark scans: case choice by slice count, phantom writing and caching."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from kidedge.bench.scans import choose_cases, make_bench_scans
from kidedge.errors import KidedgeError


def _shared_data() -> Path:
    p = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not p.is_dir():
        pytest.skip("../shared/data is not present")
    return p


def test_choose_cases_nearest_and_at_least_for_the_largest():
    cases = [(f"case_{i:05d}", Path(f"{i}"), n) for i, n in enumerate((29, 58, 63, 240, 255, 590, 602, 611, 900))]
    picks = choose_cases(cases, (60, 250, 600))
    assert [c[2] for c in picks] == [58, 255, 602]  # 58 and 63 tie at distance 2..3: nearest wins; >= 600
    # distinct cases even when the targets would pick the same one
    assert len({c[0] for c in choose_cases(cases, (60, 61))}) == 2
    with pytest.raises(KidedgeError):
        choose_cases(cases[:1], (60, 250))


def test_synthetic_scans_written_in_kits_layout_and_cached(tmp_path):
    scans = make_bench_scans(tmp_path, targets=(10,), synthetic_shape=(48, 48))
    (scan,) = scans
    assert scan.slices == 10 and scan.shape == (10, 48, 48) and scan.source == "synthetic"
    img = nib.load(str(scan.image))
    assert img.shape == (10, 48, 48) and nib.aff2axcodes(img.affine) == ("I", "P", "L")
    assert np.asarray(img.dataobj).dtype == np.int16
    truth = np.asarray(nib.load(str(scan.truth)).dataobj)
    assert truth.shape == (10, 48, 48) and set(np.unique(truth)) <= {0, 1, 2, 3} and (truth > 0).any()
    mtime = scan.image.stat().st_mtime_ns
    again = make_bench_scans(tmp_path, targets=(10,), synthetic_shape=(48, 48))
    assert again == scans and scan.image.stat().st_mtime_ns == mtime  # reused, not rewritten


@pytest.mark.shared_data
def test_real_label_geometry_chosen_by_slice_count():
    from kidedge.bench.scans import label_cases

    cases = label_cases(_shared_data() / "kits19-labels")
    assert len(cases) > 100
    picks = choose_cases(cases, (60, 250, 600))
    assert abs(picks[0][2] - 60) <= 15 and abs(picks[1][2] - 250) <= 25 and picks[2][2] >= 600
