"""SingleThreadedBlas: OpenBLAS at one thread inside, restored after (skips without OpenBLAS)."""

import numpy as np  # noqa: F401 - loads numpy's OpenBLAS
import pytest

from kidedge.runtime.blas_threads import SingleThreadedBlas, openblas_libraries


def _counts():
    return [int(getter()) for _, getter, _ in openblas_libraries()]


def test_blas_single_threaded_inside_and_restored_after(monkeypatch):
    if not openblas_libraries():
        pytest.skip("no OpenBLAS loaded in this process")
    monkeypatch.delenv("KIDEDGE_BLAS_THREADS", raising=False)
    for _, _, setter in openblas_libraries():
        setter(2)
    before = _counts()
    with SingleThreadedBlas():
        assert _counts() == [1] * len(before)
    assert _counts() == before


def test_env_zero_leaves_blas_alone(monkeypatch):
    if not openblas_libraries():
        pytest.skip("no OpenBLAS loaded in this process")
    for _, _, setter in openblas_libraries():
        setter(2)
    monkeypatch.setenv("KIDEDGE_BLAS_THREADS", "0")
    with SingleThreadedBlas():
        assert _counts() == [2] * len(_counts())


def test_segmenter_runs_with_single_threaded_blas(single_package):
    if not openblas_libraries():
        pytest.skip("no OpenBLAS loaded in this process")
    from kidedge.package import ModelPackage
    from kidedge.runtime.backends.registry import select_backend
    from kidedge.runtime.engine import Segmenter

    pkg = ModelPackage.load(single_package)
    for _, _, setter in openblas_libraries():
        setter(2)
    before = _counts()
    with Segmenter(pkg, select_backend(pkg)):
        assert set(_counts()) == {1}
    assert _counts() == before
