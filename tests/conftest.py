"""Fixtures for the whole suite."""

import pytest

from kidedge.runtime.backends import registry


@pytest.fixture(autouse=True)
def _cpu_int8_kernels_do_not_saturate(monkeypatch):
    # Whether ``--precision auto`` runs a package's 8-bit int8-cpu weights depends on the host
    # CPU (kidedge.environment.int8_pairs_saturate: AVX2 without VNNI). Tests pin a CPU with
    # VNNI, so that they pass alike on any host; tests of the other case patch it themselves.
    monkeypatch.setattr(registry, "int8_pairs_saturate", lambda: False)
