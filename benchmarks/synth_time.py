#!/usr/bin/env python3
"""How long `make synth` takes: the pinned `cdk synth` with both nag packs, side by side
with a bare in-process synth of the same app without nag (what a user without the
compliance checks would run). Prints seconds and the ratio; asserts nothing.

Goal (issue 2): `make synth` <= 30 s on a 2-core machine.
Usage: ``python benchmarks/synth_time.py [--quick] [--json PATH]`` (quick: one round).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")
from _bench import Report, json_path  # noqa: E402

CDK = REPO / "node_modules" / ".bin" / "cdk"
ENV = {
    **os.environ,
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "20",
    "CDK_DISABLE_VERSION_CHECK": "1",
}
BARE = """
import sys
sys.path.insert(0, {repo!r})
from aws_cdk import App
from stacks.app_factory import build_app
from oncopipe.deployment import read_cdk_json
build_app(App(context=read_cdk_json(), outdir={out!r}), nag=False).app.synth()
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(rounds: int = 2) -> int:
    if not CDK.exists():
        print("node_modules/.bin/cdk is missing: run `make setup` first", file=sys.stderr)
        return 1
    full, bare = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as out:
            full.append(timed([str(CDK), "synth", "--quiet", "-c", "env=dev", "-o", out]))
        with tempfile.TemporaryDirectory() as out:
            bare.append(timed([sys.executable, "-c", BARE.format(repo=str(REPO), out=out)]))
    shutil.rmtree(REPO / "cdk.out", ignore_errors=True)
    best_full, best_bare = min(full), min(bare)
    print(f"{'variant':<48} {'best s':>8} {'all runs':>20}")
    print(f"{'make synth (cdk CLI, AwsSolutions + HIPAA nag)':<48} {best_full:>8.1f} "
          f"{' '.join(f'{t:.1f}' for t in full):>20}")  # fmt: skip
    print(f"{'bare in-process synth, no nag (baseline)':<48} {best_bare:>8.1f} "
          f"{' '.join(f'{t:.1f}' for t in bare):>20}")  # fmt: skip
    print(f"ratio make synth / baseline: {best_full / best_bare:.2f}x")
    print(f"goal <= 30 s: {'met' if best_full <= 30 else 'NOT met'} ({best_full:.1f} s, "
          f"{os.cpu_count()} cores)")  # fmt: skip
    report = Report("synth_time", quick=rounds == 1)
    report.add("make synth (cdk CLI + both nag packs) vs bare synth", best_full, best_bare,
               goal="<= 30 s", unit="s", passed=best_full <= 30,
               note=f"best of {rounds}")  # fmt: skip
    report.write(json_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(rounds=1 if "--quick" in sys.argv else 2))
