"""How an anatomical phantom looks: contrast phase, HU per tissue, scanner, randomised.

Centre: published Hounsfield units per tissue and contrast phase. Around it: SynthSeg-style
domain randomisation (Billot et al., "SynthSeg: Segmentation of brain MRI scans of any
contrast and resolution without retraining", section 3: intensities drawn per label,
bias field, resolution, noise), so that no model can rely on one grey value per organ.

Phases (timing after an iodinated bolus) and what they do to the kidney:

- non-contrast: kidney 30-40 HU, like muscle and unenhanced liver;
- corticomedullary (late arterial, 25-40 s): cortex bright, medulla dark, aorta very bright;
- nephrographic (80-120 s): homogeneous bright parenchyma;
- portal venous (60-75 s): liver and portal vein enhanced, kidney nearly homogeneous;
- excretory (5-15 min): collecting system, ureters and bladder opacified, very bright.

HU ranges (mean of the tissue) follow:
- Bae, "Intravenous contrast medium administration and scan timing at CT: considerations
  and approaches", Radiology 2010 (aortic, portal and hepatic enhancement per phase);
- Yuh and Cohan, "Different phases of renal enhancement: role in detecting and
  characterizing renal masses during helical CT", AJR 1999 (cortex and medulla per phase);
- Kim et al., "Differentiation of subtypes of renal cell carcinoma on helical CT scans",
  AJR 2002 (clear-cell tumours enhance strongly, papillary ones weakly);
- Silverman et al., "Bosniak classification of cystic renal masses, version 2019",
  Radiology 2019 (simple cysts -9..20 HU; hyperattenuating cysts >= 70 HU unenhanced);
- Boll and Merkle, "Diffuse liver disease: strategies for hepatic CT and MR imaging",
  RadioGraphics 2009 (unenhanced liver 55-65 HU, spleen about 10 HU lower);
- Silverman, Leyendecker and Amis, "What is the current role of CT urography and MR
  urography in the evaluation of the urinary tract?", Radiology 2009 (excretory phase);
- Boland et al., "Characterization of adrenal masses using unenhanced CT: an analysis of
  the CT literature", AJR 1998 (adrenal tissue and lipid-rich adenomas);
- fat, muscle, bone, lung, water: the standard HU scale (Kalender, "Computed Tomography:
  Fundamentals, System Technology, Image Quality, Applications", chapter 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kidedge.phantom import tissues as T

PHASES = ("noncontrast", "corticomedullary", "nephrographic", "portal_venous", "excretory")
PHASE_WEIGHTS = (0.22, 0.26, 0.14, 0.24, 0.14)

# (low, high) mean HU per tissue: non-contrast, corticomedullary, nephrographic,
# portal venous, excretory. A single pair applies to every phase.
_HU = {
    T.AIR: (-1010, -990),
    T.LUNG: (-900, -760),
    T.SKIN: (10, 60),
    T.SUBCUT_FAT: (-120, -85),
    T.VISCERAL_FAT: (-115, -80),
    T.SINUS_FAT: (-110, -70),
    T.MUSCLE: [(40, 55), (48, 65), (48, 65), (48, 65), (45, 60)],
    T.BONE_CORTEX: (600, 1300),
    T.BONE_MARROW: (140, 400),
    T.DISC: (60, 110),
    T.CSF: (0, 20),
    T.SPINAL_CORD: (20, 45),
    T.CARTILAGE: (80, 200),
    T.ARTERY: [(35, 50), (250, 450), (130, 190), (150, 220), (90, 140)],
    T.VEIN: [(35, 50), (80, 150), (130, 180), (130, 190), (90, 130)],
    T.PORTAL_VEIN: [(35, 50), (100, 160), (140, 190), (160, 230), (100, 140)],
    T.HEART_BLOOD: [(35, 50), (220, 420), (130, 180), (140, 200), (90, 130)],
    T.MYOCARDIUM: [(35, 50), (90, 140), (90, 120), (90, 120), (80, 110)],
    T.SMALL_VESSEL: [(-30, 10), (40, 120), (30, 90), (40, 100), (10, 60)],
    T.LIVER: [(50, 66), (60, 85), (95, 125), (100, 130), (80, 105)],
    T.LIVER_VESSEL: [(30, 45), (50, 90), (140, 180), (150, 210), (100, 130)],
    T.SPLEEN: [(40, 55), (100, 160), (105, 130), (110, 140), (90, 110)],
    T.PANCREAS: [(35, 50), (100, 150), (85, 110), (90, 120), (70, 95)],
    T.ADRENAL: [(5, 40), (60, 100), (50, 90), (50, 90), (40, 70)],
    T.BOWEL_WALL: [(30, 45), (70, 120), (60, 100), (70, 120), (50, 80)],
    T.BOWEL_FLUID: (0, 25),
    T.BOWEL_AIR: (-1000, -900),
    T.BOWEL_CONTRAST: (150, 700),
    T.FAECES: (-90, 50),
    T.GALLBLADDER: (0, 25),
    T.STONE: (150, 900),
    T.BLADDER_WALL: [(35, 50), (60, 90), (60, 90), (60, 90), (50, 80)],
    T.PROSTATE: [(30, 50), (50, 90), (60, 90), (60, 90), (50, 80)],
    T.URINE: [(0, 15), (0, 20), (5, 30), (5, 25), (300, 1500)],
    T.KIDNEY_CORTEX: [(28, 42), (150, 260), (150, 210), (150, 210), (110, 170)],
    T.KIDNEY_MEDULLA: [(28, 42), (60, 110), (150, 210), (130, 190), (120, 180)],
    T.KIDNEY_DEEP: [(20, 38), (40, 90), (130, 200), (100, 170), (400, 1200)],
    T.TUMOUR: [(25, 45), (80, 200), (70, 150), (70, 150), (60, 130)],
    T.TUMOUR_NECROSIS: (10, 35),
    T.CYST: (-5, 20),
    T.LESION_HYPO: [(10, 45), (30, 70), (30, 80), (30, 80), (30, 70)],
    T.LESION_HYPER: [(30, 50), (130, 250), (90, 140), (100, 160), (80, 120)],
    T.TABLE: (-300, 200),
    T.OUTSIDE_FOV: (-1024, -1024),
}
# Tissues whose HU is the same for any contrast (no enhancement to scale).
_NOT_ENHANCING = {T.AIR, T.LUNG, T.SUBCUT_FAT, T.VISCERAL_FAT, T.SINUS_FAT, T.BONE_CORTEX,
                  T.BONE_MARROW, T.DISC, T.CSF, T.BOWEL_FLUID, T.BOWEL_AIR, T.BOWEL_CONTRAST,
                  T.FAECES, T.GALLBLADDER, T.STONE, T.CYST, T.TUMOUR_NECROSIS, T.TABLE,
                  T.OUTSIDE_FOV, T.SKIN, T.CARTILAGE}
# Amplitude (HU std) range of each tissue's smooth texture.
_TEXTURE = {
    T.LUNG: (20, 60), T.SKIN: (4, 10), T.SUBCUT_FAT: (4, 12), T.VISCERAL_FAT: (6, 18),
    T.MUSCLE: (3, 9), T.BONE_CORTEX: (60, 160), T.BONE_MARROW: (30, 90), T.DISC: (5, 12),
    T.LIVER: (2, 8), T.SPLEEN: (3, 10), T.PANCREAS: (8, 20), T.BOWEL_WALL: (6, 18),
    T.BOWEL_FLUID: (3, 10), T.BOWEL_CONTRAST: (40, 140), T.FAECES: (40, 100),
    T.KIDNEY_CORTEX: (5, 18), T.KIDNEY_MEDULLA: (5, 16), T.KIDNEY_DEEP: (10, 40),
    T.TUMOUR: (12, 45), T.TUMOUR_NECROSIS: (3, 10), T.LESION_HYPO: (3, 12),
    T.LESION_HYPER: (8, 25), T.STONE: (50, 200), T.TABLE: (10, 40), T.URINE: (2, 8),
    T.ADRENAL: (4, 10), T.PROSTATE: (4, 12), T.SMALL_VESSEL: (5, 15),
}
_SOFT = [c for c in range(T.N_TISSUES) if c not in (
    T.AIR, T.LUNG, T.BOWEL_AIR, T.OUTSIDE_FOV, T.SUBCUT_FAT, T.VISCERAL_FAT, T.SINUS_FAT,
    T.BONE_CORTEX, T.BONE_MARROW, T.STONE, T.TABLE, T.FAECES)]

PADDING_VALUES = (-1024.0, -2048.0, -3024.0, 0.0, -2000.0)
_PADDING_P = (0.35, 0.2, 0.2, 0.15, 0.1)
SLICE_MM = (2.5, 3.0, 4.0, 5.0)
_SLICE_P = (0.1, 0.3, 0.2, 0.4)  # mean ~4 mm: ~100 slices, ~25 MB a case


@dataclasses.dataclass(frozen=True)
class Appearance:
    """One case's drawn appearance (see :func:`sample_appearance` for the ranges).

    Attributes:
        phase: one of ``PHASES``; mode: "physiological", "widened" or "random" (how far
            the HU table was pushed beyond published ranges).
        hu_mean, hu_texture: float32 (N_TISSUES,) mean HU and texture std per tissue.
        slice_mm: distance between the written slices; thickness_mm: reconstructed slice
            thickness (thinner than the spacing for thin-slice scans kept every k-th slice).
        n_sub: sub-slices rendered per written slice (3: the slice profile is integrated).
        z_mix: with one sub-slice, the weight of each neighbouring written slice.
        blur_mm: in-plane point-spread (gaussian sigma, mm); lowres: in-plane
            downsampling factor of the acquisition (1: none).
        noise_sigma, noise_corr_px: scanner noise std (HU) and in-plane correlation.
        bias_frac: amplitude of the smooth multiplicative field on attenuation (HU+1000);
            bias_hu_frac: SynthSeg's multiplicative field on HU itself (random mode).
        hu_offset: calibration offset (HU).
        padding: value outside the reconstruction circle, or None (square field, air).
        fov_frac: radius of the reconstruction circle as a fraction of half the field.
        has_table, has_arms: what lies outside the body.
        oral_contrast, bowel_air: fraction of bowel content that is positive contrast, air.
        tumour_kind: "clear_cell" (hypervascular) or "papillary" (hypovascular).
    """

    phase: str
    mode: str
    hu_mean: np.ndarray
    hu_texture: np.ndarray
    slice_mm: float
    thickness_mm: float
    n_sub: int
    z_mix: float
    blur_mm: float
    lowres: float
    noise_sigma: float
    noise_corr_px: float
    bias_frac: float
    bias_hu_frac: float
    hu_offset: float
    padding: float | None
    fov_frac: float
    has_table: bool
    has_arms: bool
    oral_contrast: float
    bowel_air: float
    tumour_kind: str

    def summary(self) -> dict:
        """JSON-able parameters (what sources.json records per case)."""
        key = {T.KIDNEY_CORTEX: "kidney_cortex", T.KIDNEY_MEDULLA: "kidney_medulla",
               T.TUMOUR: "tumour", T.CYST: "cyst", T.LIVER: "liver", T.SPLEEN: "spleen",
               T.MUSCLE: "muscle", T.ARTERY: "aorta", T.VISCERAL_FAT: "fat",
               T.URINE: "urine", T.BOWEL_CONTRAST: "oral_contrast"}
        out = {f: getattr(self, f) for f in (
            "phase", "mode", "slice_mm", "thickness_mm", "n_sub", "z_mix", "blur_mm", "lowres",
            "noise_sigma", "noise_corr_px", "bias_frac", "bias_hu_frac", "hu_offset",
            "padding", "fov_frac", "has_table", "has_arms", "oral_contrast", "bowel_air",
            "tumour_kind")}
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
        out["hu"] = {name: round(float(self.hu_mean[c]), 1) for c, name in key.items()}
        return out


def _range(code: int, phase_index: int):
    r = _HU.get(code, (0, 0))
    return r[phase_index] if isinstance(r, list) else r


def sample_appearance(rng: np.random.Generator, phase: str | None = None) -> Appearance:
    """Draw one case's appearance.

    HU: each tissue's non-contrast value and its phase value are drawn from the published
    ranges, and the enhancement (phase minus non-contrast) is scaled by one per-case
    factor 0.7-1.3 (dose, timing and cardiac output move all enhancing tissues together).
    Then, SynthSeg-style: 70 % of cases stay physiological (ranges widened by 10 %), 20 %
    draw from ranges widened by half their width (at least 30 HU) on each side, and 10 %
    draw every soft tissue uniformly in -50..300 HU (fat -200..0, bone 200..1500).
    """
    if phase is None:
        phase = PHASES[int(rng.choice(len(PHASES), p=PHASE_WEIGHTS))]
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")
    pi = PHASES.index(phase)
    mode = str(rng.choice(["physiological", "widened", "random"], p=[0.7, 0.2, 0.1]))
    gain = float(rng.uniform(0.7, 1.3))
    tumour_kind = "clear_cell" if rng.random() < 0.75 else "papillary"
    mean = np.zeros(T.N_TISSUES, np.float32)
    for code in range(T.N_TISSUES):
        lo, hi = _range(code, pi)
        lo0, hi0 = _range(code, 0)
        grow = 0.1 * (hi - lo) if mode == "physiological" else max(30.0, 0.5 * (hi - lo))
        if code in (T.AIR, T.OUTSIDE_FOV, T.BOWEL_AIR):
            grow = 0.0
        value = rng.uniform(lo - grow, hi + grow)
        if code not in _NOT_ENHANCING and pi > 0:
            base = rng.uniform(lo0, hi0)
            value = base + gain * (value - base)
        mean[code] = value
    if tumour_kind == "papillary" and pi > 0:
        # Hypovascular tumours gain only 10-50 HU over their unenhanced value.
        mean[T.TUMOUR] = rng.uniform(25, 45) + rng.uniform(10, 50)
    if rng.random() < 0.15:
        mean[T.CYST] = rng.uniform(50, 90)  # hyperattenuating (proteinaceous/haemorrhagic)
    if phase == "corticomedullary":
        mean[T.KIDNEY_MEDULLA] = min(mean[T.KIDNEY_MEDULLA], mean[T.KIDNEY_CORTEX] - 40)
    if mode == "random":
        for code in _SOFT:
            mean[code] = rng.uniform(-50, 300)
        for code in (T.SUBCUT_FAT, T.VISCERAL_FAT, T.SINUS_FAT, T.FAECES):
            mean[code] = rng.uniform(-200, 0)
        for code in (T.BONE_CORTEX, T.BONE_MARROW, T.STONE):
            mean[code] = rng.uniform(200, 1500)
    texture = np.zeros(T.N_TISSUES, np.float32)
    tex_gain = float(rng.uniform(0.5, 1.5))
    for code, (lo, hi) in _TEXTURE.items():
        texture[code] = rng.uniform(lo, hi) * tex_gain
    if phase == "corticomedullary":
        texture[T.SPLEEN] += rng.uniform(15, 40)  # the arterial "zebra" spleen

    slice_mm = float(rng.choice(SLICE_MM, p=_SLICE_P))
    u = rng.random()
    if u < 0.2:
        thickness = float(rng.uniform(0.6, 1.5))        # thin-slice scan, every k-th slice kept
    elif u < 0.8:
        thickness = slice_mm                            # contiguous slices
    else:
        thickness = float(slice_mm * rng.uniform(1.2, 1.6))  # overlapping reconstruction
    # Integrating the slice profile over three sub-slices triples the cost of a case, so
    # it is done for a third of the thick-slice cases; the others mix each slice with its
    # neighbours (weight ``z_mix``), a cheaper partial-volume effect of the same kind.
    n_sub = 3 if thickness >= 0.6 * slice_mm and rng.random() < 0.33 else 1
    noise_ref = float(np.exp(rng.uniform(np.log(5.0), np.log(30.0))))
    # Quantum noise scales with 1/sqrt(slice thickness) (reference: a 3 mm slice).
    noise = float(min(70.0, noise_ref * np.sqrt(3.0 / thickness)))
    padding = None
    if rng.random() < 0.55:
        padding = float(rng.choice(PADDING_VALUES, p=_PADDING_P))
    return Appearance(
        phase=phase, mode=mode, hu_mean=mean, hu_texture=texture,
        slice_mm=slice_mm, thickness_mm=float(thickness), n_sub=n_sub,
        z_mix=0.0 if thickness < 0.6 * slice_mm else float(rng.uniform(0.05, 0.22)),
        blur_mm=float(rng.uniform(0.3, 1.0)),
        lowres=float(rng.uniform(1.3, 2.5)) if rng.random() < 0.15 else 1.0,
        noise_sigma=noise, noise_corr_px=float(rng.uniform(0.5, 2.0)),
        bias_frac=float(rng.uniform(0.0, 0.03)),
        bias_hu_frac=float(rng.uniform(0.0, 0.15)) if mode == "random" else 0.0,
        hu_offset=float(rng.uniform(-10.0, 10.0)),
        padding=padding, fov_frac=float(rng.uniform(0.94, 1.0)),
        has_table=bool(rng.random() < 0.8), has_arms=bool(rng.random() < 0.25),
        oral_contrast=float(rng.choice([0.0, rng.uniform(0.1, 0.7)], p=[0.55, 0.45])),
        bowel_air=float(rng.uniform(0.03, 0.25)),
        tumour_kind=tumour_kind,
    )


def sub_slice_weights(app: Appearance) -> np.ndarray:
    """Weights of the fine slices at offsets -2..2 that make one written slice; sums to 1.

    Three sub-slices per written slice (offsets in units of slice_mm / 3): a boxcar slice
    profile of ``app.thickness_mm``. One: the slice and its neighbours (``z_mix``)."""
    if app.n_sub == 1:
        w = app.z_mix
        return np.array([0.0, w, 1.0 - 2.0 * w, w, 0.0])
    step = app.slice_mm / 3.0
    half = app.thickness_mm / 2.0
    w = np.array([max(0.0, min(j * step + step / 2, half) - max(j * step - step / 2, -half))
                  for j in range(-2, 3)])
    return w / w.sum()
