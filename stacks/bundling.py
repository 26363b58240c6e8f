"""Lambda packaging without Docker.

``PythonFunction`` bundles in a container; there is no Docker engine on the build
machines. :func:`lambda_code` packages a handler folder, the shared ``oncopipe`` library and
the handler's pinned ``requirements.txt`` (installed by pip as manylinux wheels for the
Lambda runtime) with a local bundler, less the parts of a package the function never loads
(:data:`UNUSED_PARTS`, per function). The asset hash is computed from those sources, so
it is the same on every machine and changes exactly when the deployed code would.
Tests skip bundling with the context ``aws:cdk:bundling-stacks: []``.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class UnusedParts:
    """Files of one installed package that a function never loads, and why.

    ``patterns`` are globs relative to the package's folder in the bundle (a folder that
    matches goes whole). Each must match something: a new pin that renames or drops a file
    fails the synth, so the list is reviewed instead of silently trimming nothing.
    """

    package: str
    patterns: tuple[str, ...]
    why: str


#: pyarrow, for a function that reads Parquet from bytes it fetched with boto3
#: (``pq.read_table(io.BytesIO(body))``): 161 MiB without its tests, 101 MiB after these.
#: Not here: libarrow_substrait and libarrow_dataset/acero/compute/parquet, which
#: ``pyarrow.lib`` and ``libarrow_python`` link (readelf NEEDED), so ``import pyarrow``
#: needs them; there is no gandiva in the wheel.
PYARROW_PARQUET_FROM_BYTES = (
    UnusedParts("pyarrow", ("libarrow_flight.so.*", "libarrow_python_flight.so*",
                            "_flight.cpython-*.so", "flight.py"),
                "Arrow Flight (gRPC): only `import pyarrow.flight` loads it (31 MiB)"),
    UnusedParts("pyarrow", ("libarrow_s3.so.*", "_s3fs.cpython-*.so"),
                "pyarrow's own S3 filesystem (17 MiB): objects are read with boto3; "
                "pyarrow.fs imports it in a try and marks S3FileSystem unavailable"),
    UnusedParts("pyarrow", ("libarrow_python.so", "libarrow_python.so.*.*.*",
                            "libarrow_python_parquet_encryption.so",
                            "libarrow_python_parquet_encryption.so.*.*.*"),
                "copies of the libraries under their link-time names (wheels hold no "
                "symlinks): the extensions load the SONAME copy, libarrow_python.so.2600"),
    UnusedParts("pyarrow", ("include", "src", "**/*.pyx", "**/*.pxd", "**/*.pxi"),
                "C++ headers and sources, Cython sources: for building against pyarrow"),
    UnusedParts("pyarrow", ("_pyarrow_cpp_tests.cpython-*.so",),
                "the C++ half of pyarrow's test suite (test folders are always left out)"),
)  # fmt: skip
#: Per function (handler folder): parts of its requirements it never imports. Explicit
#: lists, not a glob over every package: a part is left out only where someone checked
#: that the function cannot load it (the drift function's bundle test imports and runs it).
UNUSED_PARTS: dict[str, tuple[UnusedParts, ...]] = {
    # numpy, pyarrow and matplotlib: 286 MiB unzipped with pyarrow whole, 226 without these
    "model_drift": PYARROW_PARQUET_FROM_BYTES,
}


class BundleTooLargeError(RuntimeError):
    """A function's bundle exceeds what Lambda accepts unzipped."""


class BundleLayoutError(RuntimeError):
    """A function's list of unused package parts no longer matches what pip installed."""


def bundle_size(folder: Path) -> int:
    """Return the bytes of the files under ``folder`` (what Lambda counts unzipped)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def remove_unused_parts(bundle: Path, handler_name: str) -> int:
    """Delete ``UNUSED_PARTS[handler_name]`` from ``bundle``; return the bytes removed.

    Raises:
        BundleLayoutError: a pattern matches nothing (names the function and pattern).
    """
    removed = 0
    for part in UNUSED_PARTS.get(handler_name, ()):
        root = bundle / part.package
        for pattern in part.patterns:
            matches = sorted(root.glob(pattern)) if root.is_dir() else []
            if not matches:
                raise BundleLayoutError(
                    f"lambdas/{handler_name}: {part.package}/{pattern} matches nothing in the "
                    f"installed requirements; review UNUSED_PARTS in {Path(__file__).name}"
                )
            for path in matches:
                if path.is_dir():
                    removed += bundle_size(path)
                    shutil.rmtree(path)
                elif path.exists():  # a folder removed above may have held it
                    removed += path.stat().st_size
                    path.unlink()
    return removed


def _source_files(handler_dir: Path) -> list[Path]:
    # every file of the library (the Annex E table is data): a change redeploys the code
    files = [p for p in LIBRARY_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts] + [
        p for p in handler_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    return sorted(files)


def _installed_requirements(requirements: Path, python_version: str = PYTHON_VERSION) -> Path:
    """Return a folder with the pinned requirements installed for the Lambda runtime.

    Cached under ``.build/lambda-deps/<hash of the file and target>``, so repeated synths
    and functions with the same requirements pay for pip once.
    """
    digest = hashlib.sha256(requirements.read_bytes() + f"{python_version}{PLATFORM}".encode())
    target = BUILD_DIR / "lambda-deps" / digest.hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # two synths at once (a CI matrix, parallel tests) install one target: the second waits
    # for the first's lock and then finds the folder complete
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            _install(requirements, python_version, target)
    return target


def _install(requirements: Path, python_version: str, target: Path) -> None:
    """Install ``requirements`` into ``target`` through a staging folder (call under the lock)."""
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
            python_version,
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


def source_hash(handler_dir: Path) -> str:
    """Return the SHA-256 over the files that go into a function's bundle."""
    # the bundle's layout rules too: a change to them rebundles every function
    digest = hashlib.sha256(f"{RUNTIME.name}|{PLATFORM}|{BUNDLE_LAYOUT}".encode())
    if handler_dir.name in UNUSED_PARTS:  # what it leaves out of its requirements
        digest.update(repr(UNUSED_PARTS[handler_dir.name]).encode())
    for path in _source_files(handler_dir):
        digest.update(str(path.relative_to(LIBRARY_DIR.parent)).encode("utf-8"))
        digest.update(path.read_bytes())
    return digest.hexdigest()


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Copies the handler and library and pip-installs the handler's requirements.

    ``python_version`` is the runtime's; a test that imports the bundle on this machine
    builds it for the interpreter it runs (the same pins, wheel platforms and trimming).
    """

    def __init__(self, handler_dir: Path, *, python_version: str = PYTHON_VERSION) -> None:
        self.handler_dir = handler_dir
        self.python_version = python_version

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_: object) -> bool:
        out = Path(output_dir)
        requirements = self.handler_dir / "requirements.txt"
        if requirements.exists():
            shutil.copytree(_installed_requirements(requirements, self.python_version), out,
                            ignore=_IGNORED_DEPENDENCIES, dirs_exist_ok=True)  # fmt: skip
            (out / ".complete").unlink(missing_ok=True)
            remove_unused_parts(out, self.handler_dir.name)
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
