"""Every Lambda bundle installs for the runtime and fits Lambda's unzipped limit.

The bundler is run for real (pip against the package registry, the runtime's wheel tags,
``.build/lambda-deps`` as its cache): a requirement with no wheel for the runtime, or a
bundle over 250 MiB, would otherwise first fail at ``cdk deploy``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks import bundling
from stacks.paths import LAMBDAS_DIR

pytestmark = pytest.mark.slow

WITH_REQUIREMENTS = sorted(p.parent.name for p in LAMBDAS_DIR.glob("*/requirements.txt"))


@pytest.mark.parametrize("handler", WITH_REQUIREMENTS)
def test_bundle_installs_for_the_runtime_and_fits_lambda(handler: str, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    assert bundling.PipLocalBundling(LAMBDAS_DIR / handler).try_bundle(str(out), image=None)  # type: ignore[arg-type]
    assert (out / "lambdas" / handler / "handler.py").is_file()
    assert (out / "oncopipe" / "__init__.py").is_file()
    # built for the runtime: compiled extensions carry its ABI tag, never this machine's
    abi = f"cpython-{bundling.PYTHON_VERSION.replace('.', '')}"
    extensions = list(out.rglob("*.so"))
    assert all(abi in p.name or "cpython" not in p.name for p in extensions)
    assert not list(out.rglob("tests/__init__.py"))  # test suites are left out
    assert bundling.bundle_size(out) < bundling.LAMBDA_UNZIPPED_LIMIT


def test_a_bundle_over_the_limit_names_the_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundling, "LAMBDA_UNZIPPED_LIMIT", 10)
    handler = next(p.parent.name for p in LAMBDAS_DIR.glob("*/handler.py"))
    with pytest.raises(bundling.BundleTooLargeError, match=f"lambdas/{handler}: .* MiB"):
        bundling.PipLocalBundling(LAMBDAS_DIR / handler).try_bundle(str(tmp_path), image=None)  # type: ignore[arg-type]
