"""Synthetic abdominal CT phantoms with real or procedural kidney anatomy.

Public API:

* :func:`make_phantom` (``generate.py``): one procedural case in memory, deterministic for
  a seed (tests, the demo, benchmarks).
* :func:`write_phantom_dataset` (``dataset.py``): a KiTS-layout folder of cases plus a
  montage PNG (``kidedge phantom``).
* ``anatomical.make_anatomical_phantom``: one case on a real body label map with real
  KiTS kidneys, any contrast phase, lung bases to pelvis; ``training_set.write_training_set``
  builds the built-in model's training set from them (``kidedge phantom --training-set``).

Modules: ``tissues`` (tissue codes, HU ranges of the procedural phantoms), ``fields``
(smooth random fields, scanner noise), ``kidneys`` (kidney/tumour/cyst labels, their
cortex, medulla, sinus), ``body`` (the procedural body plan), ``painter`` (painting a plan
slice by slice), ``montage`` (the PNG); for the anatomical phantoms: ``anatomy`` (real
body label maps in one organ set, orientation checked), ``warp`` (spatial augmentation),
``filler`` and ``pelvis`` (what the label maps lack, anchored to the real organs),
``transplant`` (KiTS kidneys moved into a body), ``negatives`` (kidney-like lesions),
``appearance`` (contrast phases, HU per tissue, SynthSeg-style randomisation),
``scanner`` (slice profile, blur, noise, bias, padding), ``anatomical`` (one case),
``training_set`` (the set, its grouped split and sources).
"""

from kidedge.phantom.generate import Phantom, canonical_affine, make_phantom

__all__ = ["Phantom", "canonical_affine", "make_phantom", "write_phantom_dataset"]


def write_phantom_dataset(out_dir, cases=3, from_labels=None, seed=0, montage=True):
    """See :func:`kidedge.phantom.dataset.write_phantom_dataset`."""
    from kidedge.phantom.dataset import write_phantom_dataset as _write

    return _write(out_dir, cases=cases, from_labels=from_labels, seed=seed, montage=montage)
