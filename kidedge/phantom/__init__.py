"""Synthetic abdominal CT phantoms with real or procedural kidney anatomy.

Public API:

* :func:`make_phantom` (``generate.py``): one case in memory, deterministic for a seed.
* :func:`write_phantom_dataset` (``dataset.py``): a KiTS-layout folder of cases plus a
  montage PNG (``kidedge phantom``).

Modules: ``tissues`` (tissue codes, HU ranges, per-case style), ``fields`` (smooth random
fields, scanner noise), ``kidneys`` (kidney/tumour/cyst labels and where kidneys lie),
``body`` (the body painted slice by slice), ``montage`` (the PNG).
"""

from kidedge.phantom.generate import Phantom, canonical_affine, make_phantom

__all__ = ["Phantom", "canonical_affine", "make_phantom", "write_phantom_dataset"]


def write_phantom_dataset(out_dir, cases=3, from_labels=None, seed=0, montage=True):
    """See :func:`kidedge.phantom.dataset.write_phantom_dataset`."""
    from kidedge.phantom.dataset import write_phantom_dataset as _write

    return _write(out_dir, cases=cases, from_labels=from_labels, seed=seed, montage=montage)
