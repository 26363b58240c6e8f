"""Lambda packaging without Docker.

``PythonFunction`` bundles in a container; there is no Docker engine on the build
machines. :func:`lambda_code` packages a handler folder, the shared ``oncopipe`` library and
the handler's pinned ``requirements.txt`` (installed by pip as manylinux wheels for the
Lambda runtime) with a local bundler. The asset hash is computed from those sources, so
it is the same on every machine and changes exactly when the deployed code would.
Tests skip bundling with the context ``aws:cdk:bundling-stacks: []``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import jsii
from aws_cdk import (
    AssetHashType,
    BundlingOptions,
    DockerImage,
    ILocalBundling,
    aws_lambda as lambda_,
)

from stacks.paths import BUILD_DIR, LAMBDAS_DIR, LIBRARY_DIR

#: The Lambda runtime every function uses, and the wheel tags pip must fetch for it.
RUNTIME = lambda_.Runtime.PYTHON_3_14
PYTHON_VERSION = "3.14"
#: The Python 3.14 runtime runs on Amazon Linux 2023 (glibc 2.34): any manylinux wheel for
#: glibc 2.34 or older fits. pip matches ``--platform`` tags exactly, so every tag is named;
#: manylinux2014 alone refused numpy >= 2.3 (built for manylinux_2_27/2_28 only), and
#: ``cdk synth`` failed to bundle the drift function.
GLIBC_MINOR = 34
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)),
    "manylinux2014_x86_64",
)
PLATFORM = ",".join(PLATFORMS)  # what the bundle and cache hashes record
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
#: Left out of the installed requirements: test suites (scipy's alone is tens of MiB),
#: type stubs and byte code; nothing a function imports at run time.
_IGNORED_DEPENDENCIES = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "*.pyi")
#: Names the layout rules above; part of every function's asset hash.
BUNDLE_LAYOUT = "deps-without:__pycache__,*.pyc,tests,*.pyi"
#: Lambda refuses a function whose unzipped code exceeds 250 MiB (262,144,000 bytes).
LAMBDA_UNZIPPED_LIMIT = 262_144_000


class BundleTooLargeError(RuntimeError):
    """A function's bundle exceeds what Lambda accepts unzipped."""


def bundle_size(folder: Path) -> int:
    """Return the bytes of the files under ``folder`` (what Lambda counts unzipped)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _source_files(handler_dir: Path) -> list[Path]:
    # every file of the library (the Annex E table is data): a change redeploys the code
    files = [p for p in LIBRARY_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts] + [
        p for p in handler_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    return sorted(files)


def _installed_requirements(requirements: Path) -> Path:
    """Return a folder with the pinned requirements installed for the Lambda runtime.

    Cached under ``.build/lambda-deps/<hash of the file and target>``, so repeated synths
    and functions with the same requirements pay for pip once.
    """
    digest = hashlib.sha256(requirements.read_bytes() + f"{PYTHON_VERSION}{PLATFORM}".encode())
    target = BUILD_DIR / "lambda-deps" / digest.hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            PYTHON_VERSION,
            *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
            "--target",
            str(staging),
            "-r",
            str(requirements),
        ],
        check=True,
    )
    (staging / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def source_hash(handler_dir: Path) -> str:
    """Return the SHA-256 over the files that go into a function's bundle."""
    # the bundle's layout rules too: a change to them rebundles every function
    digest = hashlib.sha256(f"{RUNTIME.name}|{PLATFORM}|{BUNDLE_LAYOUT}".encode())
    for path in _source_files(handler_dir):
        digest.update(str(path.relative_to(LIBRARY_DIR.parent)).encode("utf-8"))
        digest.update(path.read_bytes())
    return digest.hexdigest()


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Copies the handler and library and pip-installs the handler's requirements."""

    def __init__(self, handler_dir: Path) -> None:
        self.handler_dir = handler_dir

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: object) -> bool:
        out = Path(output_dir)
        requirements = self.handler_dir / "requirements.txt"
        if requirements.exists():
            shutil.copytree(_installed_requirements(requirements), out,
                            ignore=_IGNORED_DEPENDENCIES, dirs_exist_ok=True)  # fmt: skip
            (out / ".complete").unlink(missing_ok=True)
        shutil.copytree(LIBRARY_DIR, out / "oncopipe", ignore=_IGNORED, dirs_exist_ok=True)
        shutil.copytree(
            self.handler_dir,
            out / "lambdas" / self.handler_dir.name,
            ignore=_IGNORED,
            dirs_exist_ok=True,
        )
        (out / "lambdas" / "__init__.py").touch()
        size = bundle_size(out)
        if size > LAMBDA_UNZIPPED_LIMIT:
            # fail the synth, not the deployment: name the function and what it weighs
            raise BundleTooLargeError(
                f"lambdas/{self.handler_dir.name}: the bundle is {size / 2**20:.0f} MiB "
                f"unzipped; Lambda accepts at most {LAMBDA_UNZIPPED_LIMIT / 2**20:.0f} MiB "
                f"(trim {requirements.name} or move the work to a Processing job)"
            )
        return True


def lambda_code(handler_name: str) -> lambda_.Code:
    """Return the code asset of ``lambdas/<handler_name>`` (handler ``lambdas.<name>.handler``).

    Raises:
        FileNotFoundError: the handler folder does not exist.
    """
    handler_dir = LAMBDAS_DIR / handler_name
    if not (handler_dir / "handler.py").is_file():
        raise FileNotFoundError(f"{handler_dir}/handler.py not found")
    return lambda_.Code.from_asset(
        str(handler_dir),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=source_hash(handler_dir),
        bundling=BundlingOptions(
            image=RUNTIME.bundling_image,
            local=PipLocalBundling(handler_dir),
        ),
    )
