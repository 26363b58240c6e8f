"""IBSI-1 compliance check: our radiomics core on the IBSI digital phantom.

Runs :func:`oncopipe.radiomics.core.extract_roi` (the production path, cropping
included) on ``phantom.nii.gz``/``mask.nii.gz`` with ``params/ibsi-phantom.yaml`` and
compares every reference row that names a PyRadiomics feature, after the row's documented
``adjustment``:

- ``minus3``: IBSI reports excess kurtosis, PyRadiomics plain kurtosis (value - 3);
- ``pca_unbiased``: IBSI's axis lengths use the N-1 covariance (value * sqrt(N/(N-1)),
  N = voxels in the mask).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from oncopipe.radiomics.core import PARAMS_DIR, extract_roi, load_params

PHANTOM_PARAMS = PARAMS_DIR / "ibsi-phantom.yaml"


#: The IBSI-1 digital phantom, shipped with the package (CC BY 4.0, see its LICENSE.md
#: and README.md): a clone or an installed wheel checks itself with nothing beside it.
PHANTOM_DIR = Path(__file__).resolve().parent / "ibsi_phantom"


def phantom_dir() -> Path:
    """Return the folder of the IBSI phantom shipped with the package.

    Raises:
        FileNotFoundError: the package was installed without its data files.
    """
    if not (PHANTOM_DIR / "reference_values.csv").exists():
        raise FileNotFoundError(f"IBSI digital phantom missing from the package: {PHANTOM_DIR}")
    return PHANTOM_DIR


@dataclass(frozen=True)
class IbsiRow:
    ibsi_code: str
    ibsi_name: str
    feature: str  # PyRadiomics name
    reference: float
    tolerance: float
    ours: float  # after the adjustment
    adjustment: str

    @property
    def passed(self) -> bool:
        return abs(self.ours - self.reference) <= self.tolerance


def _geometry_and_arrays(image_path: Path, mask_path: Path) -> tuple[object, object, object]:
    import numpy as np
    import SimpleITK as sitk

    from oncopipe.imaging.volume import Geometry

    image = sitk.ReadImage(str(image_path))
    mask = sitk.ReadImage(str(mask_path))
    d = image.GetDirection()  # ITK: axis vectors as columns
    geometry = Geometry(
        dimensions=tuple(image.GetSize()),  # type: ignore[arg-type]
        spacing=tuple(image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(image.GetOrigin()),  # type: ignore[arg-type]
        direction=(d[0], d[3], d[6], d[1], d[4], d[7], d[2], d[5], d[8]),
        rescale_slope=1.0,
        rescale_intercept=0.0,
        dtype="<f4",
        series_uid="ibsi-digital-phantom",
        modality="phantom",
    )
    volume = sitk.GetArrayFromImage(image).astype(np.float32)
    labels = sitk.GetArrayFromImage(mask)
    return volume, labels, geometry


def run_check(phantom_dir: Path) -> list[IbsiRow]:
    """Return one row per reference value that has a PyRadiomics feature.

    Raises:
        FileNotFoundError: the phantom folder lacks a file.
    """
    phantom_dir = Path(phantom_dir)
    volume, labels, geometry = _geometry_and_arrays(
        phantom_dir / "phantom.nii.gz", phantom_dir / "mask.nii.gz"
    )
    features = extract_roi(volume, labels, geometry, load_params(PHANTOM_PARAMS))
    voxels = int((labels > 0).sum())  # type: ignore[operator,attr-defined]
    rows = []
    with open(phantom_dir / "reference_values.csv", newline="", encoding="utf-8") as f:
        for ref in csv.DictReader(f):
            name = ref["pyradiomics_name"]
            if not name:
                continue
            ours = features[name]
            adjustment = ref["adjustment"]
            if adjustment == "minus3":
                ours -= 3.0
            elif adjustment == "pca_unbiased":
                ours *= math.sqrt(voxels / (voxels - 1))
            elif adjustment:
                raise ValueError(f"reference_values.csv: unknown adjustment {adjustment!r}")
            rows.append(
                IbsiRow(ibsi_code=ref["ibsi_code"], ibsi_name=ref["ibsi_feature_name"],
                        feature=name, reference=float(ref["reference_value"]),
                        tolerance=float(ref["tolerance"]), ours=ours, adjustment=adjustment)
            )  # fmt: skip
    return rows
