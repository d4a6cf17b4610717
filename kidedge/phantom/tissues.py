"""Tissue codes of the phantoms and the per-case "style" (domain randomisation).

A phantom is painted as a map of tissue codes first; Hounsfield units come afterwards from
a per-case look-up table (mean HU and texture amplitude per tissue). The table is drawn
from published ranges for the case's contrast phase, with per-tissue jitter, so that no
model can learn "kidney = one grey value": kidney cortex and medulla overlap the spleen,
the liver in venous phase, the pancreas, vessels, bowel wall and tumours.

Ranges (HU) follow the usual radiology references for contrast-enhanced abdominal CT:
fat -120..-80, muscle 40..60, liver 50..70 unenhanced to 90..130 portal venous, spleen
heterogeneous in the arterial phase, aorta 150..350 depending on the phase, cortex
150..250 and medulla 80..120 in the corticomedullary phase, homogeneous 150..200 in the
nephrographic phase, renal cell carcinoma 80..200 with necrosis 10..30, simple cysts 0..20.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Tissue codes (uint8). The order has no meaning; painting order is decided in body.py.
AIR = 0
LUNG = 1
SKIN = 2
SUBCUT_FAT = 3
VISCERAL_FAT = 4
MUSCLE = 5
BONE_CORTEX = 6
BONE_MARROW = 7
DISC = 8
CSF = 9
ARTERY = 10
VEIN = 11
LIVER = 12
LIVER_VESSEL = 13
SPLEEN = 14
PANCREAS = 15
BOWEL_WALL = 16
BOWEL_FLUID = 17
BOWEL_AIR = 18
BOWEL_CONTRAST = 19
FAECES = 20
HEART_BLOOD = 21
MYOCARDIUM = 22
KIDNEY_CORTEX = 23
KIDNEY_MEDULLA = 24
KIDNEY_DEEP = 25
TUMOUR = 26
TUMOUR_NECROSIS = 27
CYST = 28
SINUS_FAT = 29
TABLE = 30
CARTILAGE = 31
GALLBLADDER = 32
URINE = 33
OUTSIDE_FOV = 34
# Used by the anatomical phantoms (kidedge.phantom.appearance has their HU per phase).
LESION_HYPO = 35     # liver / spleen lesion darker than its organ (cyst, metastasis)
LESION_HYPER = 36    # brighter than its organ in enhanced phases (haemangioma, HCC, FNH)
ADRENAL = 37
PORTAL_VEIN = 38
PROSTATE = 39
STONE = 40           # gallstones, calcifications
SPINAL_CORD = 41
BLADDER_WALL = 42
SMALL_VESSEL = 43    # mesenteric and retroperitoneal vessels in the fat
N_TISSUES = 44

TISSUE_NAMES = {
    v: k.lower()
    for k, v in dict(globals()).items()
    if k.isupper() and isinstance(v, int) and k not in ("N_TISSUES",)
}

PHASES = ("arterial", "venous", "excretory")
# Corticomedullary (late arterial) is how most KiTS19 scans were acquired; venous here is
# the portal-venous / nephrographic phase; excretory adds contrast in the collecting system.
PHASE_WEIGHTS = (0.5, 0.38, 0.12)

# (low, high) HU of the tissue mean, per phase. A tissue missing from a phase's dict uses
# the "any" range.
_ANY = {
    AIR: (-1010, -990),
    LUNG: (-880, -780),
    SKIN: (10, 60),
    SUBCUT_FAT: (-115, -85),
    VISCERAL_FAT: (-110, -80),
    MUSCLE: (40, 60),
    BONE_CORTEX: (700, 1200),
    BONE_MARROW: (160, 380),
    DISC: (70, 110),
    CSF: (0, 20),
    BOWEL_FLUID: (0, 30),
    BOWEL_AIR: (-1000, -900),
    BOWEL_CONTRAST: (200, 600),
    FAECES: (-60, 40),
    CYST: (0, 20),
    TUMOUR_NECROSIS: (10, 30),
    SINUS_FAT: (-110, -70),
    TABLE: (-200, 300),
    CARTILAGE: (90, 200),
    GALLBLADDER: (0, 25),
    URINE: (0, 20),
    OUTSIDE_FOV: (-1024, -1024),
}
_BY_PHASE = {
    "arterial": {
        ARTERY: (230, 380),
        VEIN: (90, 160),
        LIVER: (60, 85),
        LIVER_VESSEL: (40, 80),
        SPLEEN: (100, 150),
        PANCREAS: (100, 140),
        BOWEL_WALL: (50, 110),
        HEART_BLOOD: (200, 350),
        MYOCARDIUM: (90, 130),
        KIDNEY_CORTEX: (160, 260),
        KIDNEY_MEDULLA: (70, 120),
        KIDNEY_DEEP: (50, 110),
        TUMOUR: (90, 210),
    },
    "venous": {
        ARTERY: (150, 220),
        VEIN: (140, 200),
        LIVER: (90, 130),
        LIVER_VESSEL: (150, 210),
        SPLEEN: (100, 135),
        PANCREAS: (80, 115),
        BOWEL_WALL: (50, 100),
        HEART_BLOOD: (140, 200),
        MYOCARDIUM: (90, 120),
        KIDNEY_CORTEX: (150, 210),
        KIDNEY_MEDULLA: (135, 200),
        KIDNEY_DEEP: (110, 180),
        TUMOUR: (80, 160),
    },
    "excretory": {
        ARTERY: (110, 170),
        VEIN: (110, 160),
        LIVER: (80, 115),
        LIVER_VESSEL: (110, 160),
        SPLEEN: (90, 120),
        PANCREAS: (70, 100),
        BOWEL_WALL: (40, 80),
        HEART_BLOOD: (110, 160),
        MYOCARDIUM: (80, 110),
        KIDNEY_CORTEX: (120, 180),
        KIDNEY_MEDULLA: (130, 200),
        KIDNEY_DEEP: (300, 900),
        TUMOUR: (70, 140),
        URINE: (200, 800),
    },
}

# Amplitude (HU, std) of the smooth texture field per tissue: organs are not flat.
_TEXTURE = {
    LUNG: (20, 50),
    SKIN: (5, 10),
    SUBCUT_FAT: (4, 12),
    VISCERAL_FAT: (6, 20),
    MUSCLE: (4, 10),
    BONE_CORTEX: (60, 150),
    BONE_MARROW: (30, 80),
    DISC: (5, 12),
    LIVER: (3, 10),
    SPLEEN: (4, 12),
    PANCREAS: (8, 20),
    BOWEL_WALL: (8, 20),
    BOWEL_FLUID: (4, 10),
    BOWEL_CONTRAST: (40, 120),
    FAECES: (40, 90),
    KIDNEY_CORTEX: (6, 20),
    KIDNEY_MEDULLA: (6, 18),
    KIDNEY_DEEP: (10, 40),
    TUMOUR: (15, 45),
    TUMOUR_NECROSIS: (4, 10),
    TABLE: (10, 40),
}


@dataclasses.dataclass(frozen=True)
class PhantomStyle:
    """Everything about one case's appearance that is drawn at random.

    Attributes:
        phase: contrast phase, one of ``PHASES``.
        hu_mean: float32 (N_TISSUES,) mean HU of each tissue code.
        hu_texture: float32 (N_TISSUES,) std (HU) of the smooth texture of each tissue.
        noise_sigma: std (HU) of the scanner noise as measured in a flat region.
        noise_corr_px: gaussian sigma (pixels) of the noise's in-plane correlation (soft
            reconstruction kernels give coarse-grained noise).
        blur_px: in-plane partial-volume blur of the anatomy (gaussian sigma, pixels).
        blur_z: weight of each neighbouring slice in the through-plane blur (0..0.3).
        hu_offset: global calibration offset (HU).
        bias_hu: amplitude of a slow intensity drift across the field of view (HU).
        outside_fov_hu: value outside the reconstruction circle, or None for air there.
        has_table: whether a patient table is drawn under the body.
        has_arms: whether arms lie beside the body.
        oral_contrast: fraction of bowel content that is positive oral contrast.
        bowel_air: fraction of bowel content that is air.
    """

    phase: str
    hu_mean: np.ndarray
    hu_texture: np.ndarray
    noise_sigma: float
    noise_corr_px: float
    blur_px: float
    blur_z: float
    hu_offset: float
    bias_hu: float
    outside_fov_hu: float | None
    has_table: bool
    has_arms: bool
    oral_contrast: float
    bowel_air: float


def sample_style(rng: np.random.Generator) -> PhantomStyle:
    """Draw one case's appearance (contrast phase, HU table, noise, blur, extras)."""
    phase = PHASES[int(rng.choice(len(PHASES), p=PHASE_WEIGHTS))]
    table = dict(_ANY)
    table.update(_BY_PHASE[phase])
    mean = np.zeros(N_TISSUES, np.float32)
    for code, (lo, hi) in table.items():
        mean[code] = rng.uniform(lo, hi)
    # Keep the anatomy's ordering where it is physical: corticomedullary contrast means
    # the cortex is brighter than the medulla by at least 40 HU.
    if phase == "arterial":
        mean[KIDNEY_MEDULLA] = min(mean[KIDNEY_MEDULLA], mean[KIDNEY_CORTEX] - 40)
    # Cortex and tumour share one physiological scale: a bright phase lifts both.
    texture = np.zeros(N_TISSUES, np.float32)
    for code, (lo, hi) in _TEXTURE.items():
        texture[code] = rng.uniform(lo, hi)
    if phase == "arterial":
        # The arterial spleen is heterogeneous ("zebra" pattern).
        texture[SPLEEN] += rng.uniform(15, 40)
    outside = None
    u = rng.random()
    if u < 0.25:
        outside = float(rng.choice([-1024.0, -2048.0, -3024.0]))
    return PhantomStyle(
        phase=phase,
        hu_mean=mean,
        hu_texture=texture,
        noise_sigma=float(rng.uniform(5.0, 25.0)),
        noise_corr_px=float(rng.uniform(0.6, 1.8)),
        blur_px=float(rng.uniform(0.4, 0.9)),
        blur_z=float(rng.uniform(0.05, 0.25)),
        hu_offset=float(rng.uniform(-15.0, 15.0)),
        bias_hu=float(rng.uniform(0.0, 12.0)),
        outside_fov_hu=outside,
        has_table=bool(rng.random() < 0.7),
        has_arms=bool(rng.random() < 0.3),
        oral_contrast=float(rng.choice([0.0, rng.uniform(0.1, 0.6)], p=[0.5, 0.5])),
        bowel_air=float(rng.uniform(0.02, 0.2)),
    )
