"""The appearance model: phases, randomisation modes, slice profile, padding values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kidedge.phantom import tissues as T
from kidedge.phantom.appearance import (
    PADDING_VALUES,
    PHASES,
    sample_appearance,
    sub_slice_weights,
)


def _draws(n=400, phase=None):
    return [sample_appearance(np.random.default_rng(s), phase) for s in range(n)]


def test_every_phase_mode_and_padding_is_drawn():
    apps = _draws()
    assert {a.phase for a in apps} == set(PHASES)
    modes = [a.mode for a in apps]
    assert 0.6 < modes.count("physiological") / len(modes) < 0.8
    assert 0.05 < modes.count("random") / len(modes) < 0.16
    assert {a.padding for a in apps} == set(PADDING_VALUES) | {None}
    assert {a.slice_mm for a in apps} == {2.5, 3.0, 4.0, 5.0}
    assert {a.n_sub for a in apps} == {1, 3}


def test_physiological_kidney_hu_follows_the_phase():
    def kidney(phase):
        apps = [a for a in _draws(200, phase) if a.mode == "physiological"]
        return np.array([a.hu_mean[T.KIDNEY_CORTEX] for a in apps]), apps

    nc, _ = kidney("noncontrast")
    assert 25 < nc.min() and nc.max() < 45  # like muscle and unenhanced liver
    cm, apps = kidney("corticomedullary")
    assert np.median(cm) > 150
    assert all(a.hu_mean[T.KIDNEY_MEDULLA] <= a.hu_mean[T.KIDNEY_CORTEX] - 40 for a in apps)
    ex = [a.hu_mean[T.URINE] for a in _draws(200, "excretory") if a.mode == "physiological"]
    assert min(ex) > 120 and np.median(ex) > 400  # opacified collecting system and bladder
    pv = [a.hu_mean[T.URINE] for a in _draws(200, "portal_venous") if a.mode == "physiological"]
    assert max(pv) < 40
    cysts = np.array([a.hu_mean[T.CYST] for a in _draws(200)])
    assert (cysts < 25).mean() > 0.6 and (cysts > 50).any()  # water-like, sometimes hyperdense


def test_slice_profile_weights():
    app = sample_appearance(np.random.default_rng(0))
    thick = dataclasses.replace(app, n_sub=3, slice_mm=3.0, thickness_mm=3.0)
    assert sub_slice_weights(thick) == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0])
    wide = dataclasses.replace(thick, thickness_mm=4.5)
    w = sub_slice_weights(wide)
    assert w.sum() == pytest.approx(1.0) and w[0] == w[4] > 0 and w[2] > w[0]
    thin = dataclasses.replace(app, n_sub=1, z_mix=0.0)
    assert sub_slice_weights(thin) == pytest.approx([0, 0, 1, 0, 0])
    mixed = dataclasses.replace(app, n_sub=1, z_mix=0.2)
    assert sub_slice_weights(mixed) == pytest.approx([0, 0.2, 0.6, 0.2, 0])


def test_thin_slices_are_noisier():
    apps = _draws(400)
    thin = [a.noise_sigma for a in apps if a.thickness_mm < 1.5]
    thick = [a.noise_sigma for a in apps if a.thickness_mm >= 3.0]
    assert np.median(thin) > 1.5 * np.median(thick)
