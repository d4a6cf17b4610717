"""numpy's huge-page advice: turned off only where the kernel stalls on it, never against
the user's own NUMPY_MADVISE_HUGEPAGE."""

import pytest

from kidedge.runtime.hugepages import avoid_hugepage_stalls, thp_defrag

multiarray = pytest.importorskip("numpy._core.multiarray")
if not hasattr(multiarray, "_get_madvise_hugepage"):
    pytest.skip("this numpy has no huge-page switch", allow_module_level=True)


@pytest.fixture
def advice_on():
    """numpy's advice on for the test, the process's own setting restored afterwards."""
    before = multiarray._set_madvise_hugepage(True)
    yield
    multiarray._set_madvise_hugepage(before)


def test_defrag_mode_is_the_bracketed_word(tmp_path):
    f = tmp_path / "defrag"
    f.write_text("always defer defer+madvise [madvise] never\n")
    assert thp_defrag(f) == "madvise"
    f.write_text("always [defer+madvise] madvise never\n")
    assert thp_defrag(f) == "defer+madvise"
    assert thp_defrag(tmp_path / "absent") is None
    f.write_text("no brackets here\n")
    assert thp_defrag(f) is None


@pytest.mark.parametrize("defrag", ["madvise", "defer+madvise"])
def test_turned_off_where_the_kernel_stalls(advice_on, defrag):
    assert avoid_hugepage_stalls(defrag, environ={}) is True
    assert multiarray._get_madvise_hugepage() is False


@pytest.mark.parametrize("defrag", ["always", "defer", "never", None])
def test_left_on_where_it_does_not(advice_on, defrag, monkeypatch):
    monkeypatch.setattr("kidedge.runtime.hugepages.thp_defrag", lambda: defrag)
    assert avoid_hugepage_stalls(environ={}) is False
    assert multiarray._get_madvise_hugepage() is True


def test_the_users_choice_wins(advice_on):
    assert avoid_hugepage_stalls("madvise", environ={"NUMPY_MADVISE_HUGEPAGE": "1"}) is False
    assert multiarray._get_madvise_hugepage() is True
