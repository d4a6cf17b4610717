"""``kidedge phantom OUT --training-set``: the anatomical training set of the built-in model.

Each case is one anatomical phantom (``kidedge.phantom.anatomical``): a real body label
map (``--bodies``: BTCV, AMOS, TotalSegmentator) with real KiTS kidneys, tumours and cysts
(``--kidneys``: KiTS19/KiTS23 label maps) transplanted into it, or, in about one case in
seven, the body's own normal kidneys (tumour-free cases matter: most real kidneys are
normal). Written slices are 2.5-5 mm apart (a 2D cascade needs no more), so a case is
~10-25 MB.

The split is grouped: held-out validation and test cases use body maps AND KiTS maps that
no training case uses, so no anatomy leaks into the test numbers. Held-out bodies are
drawn from the most common source kind (BTCV); the rarer kinds (AMOS, TotalSegmentator),
whose pelvis, bowel and bone labels no other source has, stay in training.

Files: ``case_XXXXX/{imaging,segmentation}.nii.gz`` (KiTS layout, what ``kidedge train
--data OUT`` reads) and ``case_XXXXX/source.json``; ``sources.json`` (per case: part,
body, kidneys, phase, appearance); ``split.json`` (the trainer's format: train, val, test
case ids; ``kidedge train --set split.file=OUT/split.json`` uses it); ``build.json`` (the
settings; a rerun with the same settings resumes, finished cases are kept); ``montage.png``.
Cases are built in hidden temporary folders and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from kidedge.errors import KidedgeError

DEFAULT_CASES = 400
OWN_KIDNEY_FRACTION = 0.15
PARTS = ("train", "val", "test")
_BODY_DIRS = ("btcv-labels", "anatomy-labels")
_KIDNEY_DIRS = ("kits19-labels", "kits23-labels")


def shared_data_dir() -> Path | None:
    """../shared/data from the current folder or from the project root, if present."""
    here = Path.cwd() / ".." / "shared" / "data"
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    for cand in (here, root):
        if cand.is_dir():
            return cand.resolve()
    return None


def default_folders(kind: str) -> list[Path]:
    """The shared folders used when --bodies / --kidneys are not given."""
    names = _BODY_DIRS if kind == "bodies" else _KIDNEY_DIRS
    base = shared_data_dir()
    found = [base / n for n in names if base is not None and (base / n).is_dir()]
    if not found:
        flag = "--bodies" if kind == "bodies" else "--kidneys"
        what = "multi-organ body label maps" if kind == "bodies" else "KiTS label maps"
        raise KidedgeError(f"phantom --training-set: no {what} found at ../shared/data/"
                           f"{{{','.join(names)}}}; pass {flag} DIR")
    return found


def kidney_files(folders) -> list[tuple[str, Path]]:
    """[(name, label path)] of the KiTS label maps under the folders."""
    from kidedge.io import discover_cases

    out = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise KidedgeError(f"{folder}: --kidneys must be a folder of KiTS label maps")
        cases = [c for c in discover_cases(folder, flat_as="label") if c.label is not None]
        out.extend((f"{folder.name}/{c.case_id}", Path(c.label)) for c in cases)
    if not out:
        raise KidedgeError(f"{', '.join(map(str, folders))}: no KiTS label maps found")
    return out


def _held_out(names: list[str], kinds: list[str], rng, n_val: int, n_test: int):
    """Indices for (train, val, test): held-out ones from the most common kind."""
    common = Counter(kinds).most_common(1)[0][0]
    pool = [i for i, k in enumerate(kinds) if k == common]
    rng.shuffle(pool)
    if len(pool) < n_val + n_test + 1:
        pool = list(rng.permutation(len(names)))
    val, test = pool[:n_val], pool[n_val:n_val + n_test]
    train = [i for i in range(len(names)) if i not in set(val) | set(test)]
    return train, val, test


def plan_cases(bodies: list[Path], kidneys: list[tuple[str, Path]], cases: int, seed: int,
               own_fraction: float = OWN_KIDNEY_FRACTION, rows: int = 512) -> tuple[list[dict], dict]:
    """Assign parts and sources to every case (grouped split, see module docstring).

    Returns (jobs, split): jobs[i] = {case, part, body, kidneys (name or None), seed};
    split = {"train": [...], "val": [...], "test": [...], "sources": {...}}.
    """
    from kidedge.phantom.anatomy import _stem, source_kind

    if cases < 3:
        raise KidedgeError(f"phantom --training-set: --cases must be >= 3 (train, val and test), got {cases}")
    if len(bodies) < 3 or len(kidneys) < 3:
        raise KidedgeError(f"phantom --training-set: a grouped split needs >= 3 body maps and >= 3 "
                           f"KiTS maps (got {len(bodies)} and {len(kidneys)})")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5B117]))
    body_names = [f"{source_kind(p)}/{_stem(p)}" for p in bodies]
    kinds = [source_kind(p) for p in bodies]
    nb_held = max(1, int(round(0.1 * len(bodies))))
    b_parts = _held_out(body_names, kinds, rng, nb_held, nb_held)
    nk_held = max(1, int(round(0.1 * len(kidneys))))
    k_order = list(rng.permutation(len(kidneys)))
    k_parts = (k_order[2 * nk_held:], k_order[:nk_held], k_order[nk_held:2 * nk_held])
    n_val = max(1, int(round(0.1 * cases)))
    n_test = max(1, int(round(0.1 * cases)))
    order = list(rng.permutation(cases))
    part_of = {}
    for j, c in enumerate(order):
        part_of[int(c)] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    counters = {p: 0 for p in PARTS}
    jobs = []
    split = {p: [] for p in PARTS}
    for i in range(cases):
        part = part_of[i]
        pi = PARTS.index(part)
        j = counters[part]
        counters[part] += 1
        bi = b_parts[pi][j % len(b_parts[pi])]
        ki = k_parts[pi][j % len(k_parts[pi])]
        own = rng.random() < own_fraction
        name = f"case_{i:05d}"
        jobs.append({"case": name, "part": part, "body": str(bodies[bi]), "body_name": body_names[bi],
                     "kidneys": None if own else str(kidneys[ki][1]),
                     "kidneys_name": None if own else kidneys[ki][0],
                     "seed": [int(seed) & 0xFFFFFFFF, i, 0xA7A7], "rows": int(rows)})
        split[part].append(name)
    split["sources"] = {p: {"bodies": sorted(body_names[i] for i in b_parts[k]),
                            "kidneys": sorted(kidneys[i][0] for i in k_parts[k])}
                        for k, p in enumerate(PARTS)}
    return jobs, split


_CACHE: dict = {}


def _cached(key, loader, size=3):
    if key not in _CACHE:
        if len(_CACHE) >= size:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = loader()
    return _CACHE[key]


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a .nii.gz (ISA-L's fast gzip when installed, else zlib level 1)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    try:
        from isal import igzip
    except ImportError:
        nib.save(img, str(path))
        return
    path.write_bytes(igzip.compress(img.to_bytes(), compresslevel=1))


def make_case(job: dict, out: Path) -> dict:
    """Build one case into ``out/<case>`` (via a hidden temporary folder); its record."""
    from kidedge.phantom.anatomical import make_anatomical_phantom
    from kidedge.phantom.anatomy import load_body
    from kidedge.phantom.montage import pick_slices
    from kidedge.phantom.transplant import load_kidney_source

    t0 = time.process_time()
    body = _cached(("body", job["body"]), lambda: load_body(job["body"]))
    kid = None
    if job["kidneys"]:
        kid = _cached(("kid", job["kidneys"]), lambda: load_kidney_source(job["kidneys"], job["kidneys_name"]), 2)
    ph = make_anatomical_phantom(np.random.SeedSequence(job["seed"]), body, kid, rows=job["rows"])
    case = out / job["case"]
    tmp = out / f".{job['case']}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    record = {"case": job["case"], "part": job["part"], **ph.record, "seed": job["seed"]}
    try:
        save_nifti(ph.hu, ph.affine, tmp / "imaging.nii.gz")
        save_nifti(ph.labels, ph.affine, tmp / "segmentation.nii.gz")
        record["cpu_s"] = round(time.process_time() - t0, 2)
        record["mb"] = round(sum(p.stat().st_size for p in tmp.iterdir()) / 1e6, 2)
        (tmp / "source.json").write_text(json.dumps(record, indent=1))
        os.replace(tmp, case)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record["_slices"] = pick_slices(ph)
    return record


def _worker(args):
    job, out = args
    return make_case(job, Path(out))


def write_training_set(out_dir, bodies=None, kidneys=None, cases: int | None = None,
                       workers: int = 2, seed: int = 0, montage: bool = True,
                       rows: int = 512) -> list[Path]:
    """Build the anatomical training set (see the module docstring).

    Args:
        out_dir: output folder (a rerun with the same settings resumes).
        bodies: folders of body label maps (default: ../shared/data/{btcv,anatomy}-labels).
        kidneys: folders of KiTS label maps (default: ../shared/data/kits{19,23}-labels).
        cases: number of cases (default 400).
        workers: parallel processes.
        seed: the set's seed (the set is deterministic for it).
        montage: write ``montage.png`` from the first cases.
        rows: rows and columns of every slice (512 as in CT; tests use less).

    Returns:
        the case folders, in order.
    """
    from tqdm import tqdm

    from kidedge.phantom.anatomy import find_body_files

    cases = DEFAULT_CASES if cases is None else int(cases)
    body_files = find_body_files(bodies or default_folders("bodies"))
    kid_files = kidney_files(kidneys or default_folders("kidneys"))
    jobs, split = plan_cases(body_files, kid_files, cases, seed, rows=rows)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KidedgeError(f"{out}: exists and is not a folder")
    settings = {"cases": cases, "seed": int(seed), "bodies": [str(p) for p in body_files],
                "kidneys": [n for n, _ in kid_files], "rows": int(rows), "generator": 1}
    build = out / "build.json"
    if build.is_file():
        if json.loads(build.read_text()) != settings:
            raise KidedgeError(f"{out}: holds a training set built with other settings; choose an empty OUT_DIR")
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise KidedgeError(f"{out}: is not empty and holds no build.json; refusing to overwrite (choose an empty OUT_DIR)")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json(build, settings)
    todo = [j for j in jobs if not (out / j["case"] / "source.json").is_file()]
    # Cases of one body next to each other: a worker then reads each body map once.
    todo.sort(key=lambda j: (j["body"], j["case"]))
    shown = []
    with ProcessPoolExecutor(max_workers=max(1, int(workers))) as pool:
        results = pool.map(_worker, [(j, str(out)) for j in todo], chunksize=2)
        for rec in tqdm(results, total=len(todo), desc="training phantoms", unit="case"):
            slices = rec.pop("_slices")
            if montage and len(shown) < 8 and rec["part"] == "train":
                shown.append((rec["case"], rec["body"] + " + " + str(rec["kidneys"]),
                              rec["appearance"]["phase"], slices))
    records = {j["case"]: json.loads((out / j["case"] / "source.json").read_text()) for j in jobs}
    _atomic_json(out / "sources.json", records)
    _atomic_json(out / "split.json", {"seed": int(seed), "grouped_by": ["body", "kidneys"], **split})
    if montage and shown:
        from kidedge.phantom.montage import write_montage

        write_montage(sorted(shown), out / "montage.png")
    return [out / j["case"] for j in jobs]


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
