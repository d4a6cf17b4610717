"""Segmentation metrics as the KiTS challenges compute them: Dice and surface Dice (NSD).

Modules: :mod:`.scores` (the numbers), :mod:`.evaluate` (``kidedge evaluate --pred/--gt``:
folders of label maps scored, table, JSON and CSV).

numpy and scipy only (no torch: docs/architecture.md, "What may import what").

Classes
-------
KiTS21 scores three hierarchical evaluation classes (HECs) built from the label map
(0 background, 1 kidney, 2 tumour, 3 cyst):

* ``kidney``  = labels {1, 2, 3} (the whole kidney with its masses),
* ``masses``  = labels {2, 3},
* ``tumour``  = label {2}.

KiTS19 had no cyst label and scored "kidney" = kidney+tumour = labels {1, 2} and tumour =
{2}; the KiTS19 leaderboard score was the mean of the two. :func:`kits_scores` reports
both views (on KiTS19 data, where label 3 never occurs, KiTS19 kidney == KiTS21 kidney).

Empty masks
-----------
The conventions are those of the official KiTS21 evaluation (``kits21/evaluation/
metrics.py``, ``compute_metrics_for_label``): when the class is absent from both the
prediction and the truth, Dice and surface Dice are **1.0** (a correct "nothing here");
when it is absent from exactly one of them, both are **0.0**. Scores are therefore
never NaN, and a case whose truth has no tumour still counts in the mean.

Surface Dice
------------
Normalised surface distance (Nikolov et al. 2021, "Clinically applicable segmentation of
head and neck anatomy for radiotherapy", the metric of DeepMind's ``surface-distance``
package and of KiTS21): the fraction of the two surfaces that lies within
``tolerance_mm`` of the other surface. Here a surface is the set of mask voxels with at
least one face neighbour (6-connectivity, ``generate_binary_structure(3, 1)``) outside
the mask, voxels on the array border included (erosion with ``border_value=0``); every
surface voxel weighs the same, and distances are Euclidean in millimetres between voxel
centres (``distance_transform_edt`` with ``sampling=spacing``). This is exactly MONAI's
``compute_surface_dice(..., use_subvoxels=False)``. The official KiTS21 code uses
DeepMind's surfels instead (marching-cubes faces weighted by their area, distances from
surfel centres). The two agree closely for in-plane errors, but on thick slices they do
not: a voxel on a slab's top or bottom face counts as much as one on its side, while a
surfel there has a fraction of the area. Measured on real KiTS19 kidneys at 5 mm slices
(tests/test_metrics_monai.py, MONAI's surfel version as the reference), an in-plane
shift of 3 voxels scores 0.907 here vs 0.916 with surfels, but a one-voxel erosion
scores 0.545 vs 0.754. So kidedge's surface Dice is stricter than KiTS21's on
anisotropic scans; compare it with KiTS21 leaderboard numbers only with that in mind.
KiTS21 also used a different tolerance per class (about 1-2 mm), whereas kidedge uses
one tolerance (default 2 mm) for every class.

dice_multi
----------
The "dice_multi" of the SqueezeNet U-Net paper (papers/000) is fastai's ``DiceMulti``:
for each class **including background** it sums intersections and |pred|+|truth| over
every 2D slice the metric sees (the whole validation set), takes the Dice of each class
from the pooled sums (NaN for a class absent from both, then ignored), and averages over
classes. Because background fills >99 % of a CT its Dice is ~1.0 and it pulls the mean
up; :func:`dice_multi` reproduces it so users can set it beside the per-case 3D Dice.
"""

from kidedge.metrics.evaluate import evaluate_dirs, find_predictions, format_table
from kidedge.metrics.scores import (
    _SURFACE_STRUCTURE,
    KITS19_CLASSES,
    KITS21_CLASSES,
    N_LABEL_CLASSES,
    SCORE_ORDER,
    DiceMultiPool,
    dice,
    dice_multi,
    hierarchical_dice,
    kits_scores,
    summarise_values,
    surface_dice,
)

__all__ = [
    "KITS19_CLASSES",
    "KITS21_CLASSES",
    "N_LABEL_CLASSES",
    "SCORE_ORDER",
    "_SURFACE_STRUCTURE",
    "DiceMultiPool",
    "dice",
    "dice_multi",
    "evaluate_dirs",
    "find_predictions",
    "format_table",
    "hierarchical_dice",
    "kits_scores",
    "summarise_values",
    "surface_dice",
]
