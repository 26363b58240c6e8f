"""Run a SageMaker Pipeline definition on this machine, step by step.

The runner takes the same JSON the stack deploys (:func:`oncopipe.pipeline.definition.
model_pipeline`) and an S3 store (the local mode's embedded endpoint, any S3-compatible
endpoint, or moto in tests: :class:`oncopipe.storage.ObjectStore`). For each step, in
dependency order (``DependsOn``, the steps its ``Get`` expressions read, and the Condition
step a branch step sits in), it:

* resolves ``Parameters.*``, ``Execution.*``, ``Steps.<step>.<property path>``,
  ``Std:Join`` and ``Std:JsonGet`` (on the step's declared property files);
* runs the step's entry point in this process, with the container's contract:

  - Processing: ``ContainerEntrypoint`` ``python -m <module>`` -> ``<module>.main(args)``
    of this repository (``processing.cohort``, ``training.evaluate``...). Each
    ``ProcessingInput`` is downloaded to a job folder standing for its ``LocalPath``, every
    ``/opt/ml/...`` argument is mapped to that folder, and each ``ProcessingOutput`` folder
    is uploaded to its ``S3Uri`` when the job ends (``EndOfJob``);
  - Training: script mode. ``SAGEMAKER_PROGRAM`` (``training/train.py``) ->
    ``training.train.main`` with the hyperparameters as ``--name value``, each channel
    downloaded to a folder named by ``SM_CHANNEL_<NAME>``, ``SM_MODEL_DIR``,
    ``SM_OUTPUT_DATA_DIR`` and ``SM_CHECKPOINT_DIR`` (synced with ``CheckpointConfig``);
    the model folder is uploaded as ``<S3OutputPath>/<job>/output/model.tar.gz``;
  - Condition: evaluates ``Conditions`` (all must hold; ``Equals``, ``GreaterThan``,
    ``GreaterThanOrEqualTo``, ``LessThan``, ``LessThanOrEqualTo``, ``In``, ``Not``, ``Or``)
    and runs ``IfSteps`` or ``ElseSteps``;
  - RegisterModel: records the model package as JSON under ``model-registry/<group>/`` of
    the artifacts bucket, status as requested (PendingManualApproval);
  - Fail: raises :class:`PipelineFailed` with the resolved ``ErrorMessage``.

Step cache: a step with ``CacheConfig.Enabled`` whose resolved arguments hash to a record
under ``pipelines/<pipeline>/cache/<step>/`` of the artifacts bucket (younger than
``ExpireAfter``) and whose outputs still exist is not run again: it prints
``<step>: cached`` and its recorded properties stand. Execution variables
(``PipelineExecutionId``...) are left out of the hash, so per-execution paths do not defeat
the cache.

Jobs run in this process so that an in-process S3 stand-in serves them too; the runner sets
a job's environment variables for the job's duration and restores them after.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib
import json
import math
import os
import random
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oncopipe.pipeline.definition import (
    EXECUTION_VARIABLES,
    DefinitionError,
    check_references,
    referenced_steps,
)
from oncopipe.pipeline.expressions import (
    CACHED as CACHED,
    FAILED as FAILED,
    NOT_EXECUTED as NOT_EXECUTED,
    SUCCEEDED as SUCCEEDED,
    Context,
    LocalRunError as LocalRunError,
    StepRun as StepRun,
    as_text,
    evaluate_condition as evaluate_condition,
    property_path as property_path,
    resolve as resolve,
)
from oncopipe.storage import TAG_RUN_ID, TAG_STEP

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: Artifacts-bucket prefixes of the runner's records.
PIPELINES_PREFIX = "pipelines/"
MODEL_REGISTRY_PREFIX = "model-registry/"
LOCAL_ACCOUNT = "000000000000"
#: Objects of a step's input downloaded at a time, and the size read with a single GET.
DOWNLOAD_THREADS = 8
SMALL_OBJECT_BYTES = 8 * 1024 * 1024


class StepFailed(RuntimeError):
    """A step's job failed (non-zero exit or an exception); the message names the step."""


class PipelineFailed(RuntimeError):
    """A Fail step ran: ``message`` is its resolved ErrorMessage; ``result`` the execution."""

    def __init__(self, step: str, message: str, result: ExecutionResult) -> None:
        super().__init__(f"pipeline failed at step {step}: {message}")
        self.step = step
        self.message = message
        self.result = result


@dataclass
class ExecutionResult:
    """One execution: its id, parameter values, and every step's outcome."""

    execution_id: str
    parameters: dict[str, Any]
    steps: dict[str, StepRun]
    status: str = "Executing"
    failure: str | None = None

    def status_of(self, step: str) -> str:
        """Return a step's status (``NotExecuted`` for a step that never ran)."""
        run = self.steps.get(step)
        return run.status if run else NOT_EXECUTED


#: How the local runner searches a Tuning step's ranges (SageMaker: the step's Strategy).
LOCAL_TUNING_STRATEGY = "Random"


def _draw(ranges: Mapping[str, Any], rng: random.Random, where: str) -> dict[str, str]:
    """Draw one trial's hyperparameters (strings) from a tuning job's ParameterRanges."""
    out: dict[str, str] = {}
    for r in ranges.get("CategoricalParameterRanges", []):
        out[r["Name"]] = str(rng.choice(list(r["Values"])))
    for kind in ("ContinuousParameterRanges", "IntegerParameterRanges"):
        for r in ranges.get(kind, []):
            lo, hi = float(r["MinValue"]), float(r["MaxValue"])
            scaling = r.get("ScalingType", "Auto")
            if scaling in ("Logarithmic", "ReverseLogarithmic") and lo <= 0:
                raise LocalRunError(f"{where}: {r['Name']}: logarithmic scaling needs MinValue > 0")
            if scaling == "Logarithmic":
                x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            elif scaling == "ReverseLogarithmic":  # dense near MaxValue
                x = hi + lo - math.exp(rng.uniform(math.log(lo), math.log(hi)))
            else:
                x = rng.uniform(lo, hi)
            out[r["Name"]] = str(round(x)) if kind == "IntegerParameterRanges" else f"{x:.6g}"
    return out


# -- the runner -----------------------------------------------------------------------------
def _split_s3(uri: str, where: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise LocalRunError(f"{where}: {uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _duration(text: str) -> dt.timedelta:
    """Return an ISO 8601 duration (``P30D``, ``PT12H``, ``P1DT6H``; no years or months)."""
    m = re.fullmatch(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text)
    if not m or text in ("P", "PT"):
        raise LocalRunError(f"CacheConfig ExpireAfter {text!r}: use weeks, days, hours...")
    w, d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    return dt.timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s)


@contextlib.contextmanager
def set_environment(values: Mapping[str, Any]) -> Iterator[None]:
    """Set ``values`` (as strings) in ``os.environ`` for the block; restore them after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _repo_module(module: str, where: str) -> Any:
    """Import a module of this repository that has ``main(argv)``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module):
        raise LocalRunError(f"{where}: {module!r} is not a module name")
    mod = importlib.import_module(module)
    path = Path(getattr(mod, "__file__", "") or "").resolve()
    if REPO_ROOT not in path.parents:
        raise LocalRunError(f"{where}: {module} is not a module of this repository")
    if not callable(getattr(mod, "main", None)):
        raise LocalRunError(f"{where}: {module} has no main(argv)")
    return mod


def _call_main(module: Any, argv: list[str], where: str) -> None:
    try:
        rc = module.main(argv)
    except SystemExit as e:  # argparse errors and sys.exit in the entry point
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        raise StepFailed(f"{where}: {module.__name__} raised {type(e).__name__}: {e}") from e
    if rc not in (0, None):
        raise StepFailed(f"{where}: {module.__name__} exited with status {rc}")


class LocalPipelineRunner:
    """Runs one pipeline definition against an S3 store, in a local work folder.

    ``artifacts_bucket`` receives the cache records, the execution records and the model
    registry. ``environment`` is added to every job's environment (e.g. ``AWS_ENDPOINT_URL``
    of the local mode's endpoint). ``echo`` receives one progress line per step event.

    Raises:
        DefinitionError: the definition refers to unknown steps, parameters or files.
    """

    def __init__(
        self,
        definition: Mapping[str, Any],
        store: Any,
        *,
        work_dir: Path | str,
        artifacts_bucket: str,
        pipeline_name: str = "oncopipe-model",
        region: str = "eu-west-1",
        environment: Mapping[str, str] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        check_references(definition)
        self.definition = definition
        self.store = store
        self.work_dir = Path(work_dir)
        self.artifacts_bucket = artifacts_bucket
        self.pipeline_name = pipeline_name
        self.region = region
        self.environment = dict(environment or {})
        self.echo = echo
        self._steps, self._parent = self._flatten(definition.get("Steps", []))
        self._order = self._topological()

    # -- structure ------------------------------------------------------------------------
    @staticmethod
    def _flatten(
        steps: Sequence[Mapping[str, Any]],
    ) -> tuple[dict[str, Mapping[str, Any]], dict[str, tuple[str, bool]]]:
        flat: dict[str, Mapping[str, Any]] = {}
        parent: dict[str, tuple[str, bool]] = {}  # branch step -> (condition step, if-branch)

        def add(items: Sequence[Mapping[str, Any]], owner: tuple[str, bool] | None) -> None:
            for step in items:
                name = str(step["Name"])
                flat[name] = step
                if owner is not None:
                    parent[name] = owner
                if step.get("Type") == "Condition":
                    args = step.get("Arguments", {})
                    add(args.get("IfSteps", []), (name, True))
                    add(args.get("ElseSteps", []), (name, False))

        add(steps, None)
        return flat, parent

    def dependencies(self, name: str) -> set[str]:
        """Return the steps ``name`` waits for."""
        step = self._steps[name]
        deps = set(step.get("DependsOn", [])) | referenced_steps(step.get("Arguments", {}))
        if step.get("Type") == "Condition":
            args = step.get("Arguments", {})
            deps = referenced_steps(args.get("Conditions", [])) | set(step.get("DependsOn", []))
        if name in self._parent:
            deps.add(self._parent[name][0])
        return deps

    def _topological(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise DefinitionError(f"steps depend on each other: {' -> '.join(chain)}")
            state[name] = 1
            for dep in sorted(self.dependencies(name)):
                visit(dep, (*chain, dep))
            state[name] = 2
            order.append(name)

        for name in self._steps:
            visit(name, (name,))
        return order

    def _parameters(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        declared = {str(p["Name"]): p for p in self.definition.get("Parameters", [])}
        values = {n: p.get("DefaultValue") for n, p in declared.items()}
        for name, value in (given or {}).items():
            if name not in declared:
                raise LocalRunError(
                    f"unknown pipeline parameter {name!r} (parameters: {', '.join(declared)})"
                )
            kind = declared[name]["Type"]
            ok = {
                "String": isinstance(value, str),
                "Boolean": isinstance(value, bool),
                "Integer": isinstance(value, int) and not isinstance(value, bool),
                "Float": isinstance(value, int | float) and not isinstance(value, bool),
            }[kind]
            if not ok:
                raise LocalRunError(f"parameter {name}: {value!r} is not a {kind}")
            values[name] = float(value) if kind == "Float" else value
        missing = [n for n, v in values.items() if v is None]
        if missing:
            raise LocalRunError(f"parameters without a value: {', '.join(missing)}")
        return values

    # -- running --------------------------------------------------------------------------
    def start(
        self, parameters: Mapping[str, Any] | None = None, *, execution_id: str | None = None
    ) -> ExecutionResult:
        """Run the pipeline once; return every step's outcome.

        Raises:
            PipelineFailed: a Fail step ran (its message), the result attached.
            StepFailed: a job failed.
            LocalRunError: bad parameters or a definition this runner cannot run.
        """
        exec_id = execution_id or f"local-{uuid.uuid4().hex[:12]}"
        now = dt.datetime.now(dt.UTC)
        ctx = Context(
            parameters=self._parameters(parameters),
            execution={
                "PipelineExecutionId": exec_id,
                "PipelineExecutionArn": f"arn:aws:sagemaker:{self.region}:{LOCAL_ACCOUNT}:"
                f"pipeline/{self.pipeline_name}/execution/{exec_id}",
                "PipelineName": self.pipeline_name,
                "PipelineArn": f"arn:aws:sagemaker:{self.region}:{LOCAL_ACCOUNT}:"
                f"pipeline/{self.pipeline_name}",
                "StartDateTime": now.isoformat(),
                "CurrentDateTime": now.isoformat(),
            },
            steps={},
            property_files={},
        )
        assert set(ctx.execution) == set(EXECUTION_VARIABLES)
        result = ExecutionResult(exec_id, dict(ctx.parameters), ctx.steps)
        branch: dict[str, bool] = {}  # condition step -> outcome
        try:
            for name in self._order:
                step = self._steps[name]
                if not self._runnable(name, ctx, branch):
                    ctx.steps[name] = StepRun(name, str(step["Type"]), NOT_EXECUTED)
                    self.echo(f"{name}: not executed")
                    continue
                ctx.execution["CurrentDateTime"] = dt.datetime.now(dt.UTC).isoformat()
                self._run_step(name, step, ctx, branch)
        except PipelineFailed as e:
            result.status, result.failure = FAILED, e.message
            e.result = result
            self._record(result)
            raise
        except Exception as e:
            result.status, result.failure = FAILED, f"{type(e).__name__}: {e}"
            self._record(result)
            raise
        result.status = SUCCEEDED
        self._record(result)
        return result

    def _runnable(self, name: str, ctx: Context, branch: Mapping[str, bool]) -> bool:
        if name in self._parent:
            cond, if_branch = self._parent[name]
            if cond not in branch or branch[cond] != if_branch:
                return False
        return all(
            ctx.steps.get(d) is not None and ctx.steps[d].status in (SUCCEEDED, CACHED)
            for d in self.dependencies(name)
        )

    def _run_step(
        self, name: str, step: Mapping[str, Any], ctx: Context, branch: dict[str, bool]
    ) -> None:
        kind = str(step["Type"])
        where = f"step {name}"
        if kind == "Condition":
            conditions = step["Arguments"]["Conditions"]
            outcome = all(
                evaluate_condition(c, lambda v: resolve(v, ctx, where=where)) for c in conditions
            )
            branch[name] = outcome
            ctx.steps[name] = StepRun(name, kind, SUCCEEDED, {"Outcome": outcome})
            taken = step["Arguments"].get("IfSteps" if outcome else "ElseSteps", [])
            self.echo(
                f"{name}: {str(outcome).lower()} -> {', '.join(s['Name'] for s in taken) or '-'}"
            )
            return
        if kind == "Fail":
            message = as_text(resolve(step["Arguments"].get("ErrorMessage", ""), ctx, where=where))
            ctx.steps[name] = StepRun(name, kind, FAILED, {"ErrorMessage": message})
            self.echo(f"{name}: failed: {message}")
            raise PipelineFailed(
                name,
                message,
                ExecutionResult(
                    ctx.execution["PipelineExecutionId"], dict(ctx.parameters), ctx.steps
                ),
            )
        runners = {
            "Processing": self._processing,
            "Training": self._training,
            "Tuning": self._tuning,
            "RegisterModel": self._register,
        }
        if kind not in runners:
            raise LocalRunError(f"{where}: step type {kind} does not run locally")
        args = resolve(step["Arguments"], ctx, where=where)
        cache = step.get("CacheConfig", {})
        key = None
        if cache.get("Enabled"):
            key = self._cache_key(name, step, ctx)
            hit = self._cache_hit(name, key, cache.get("ExpireAfter"))
            if hit is not None:
                ctx.steps[name] = StepRun(name, kind, CACHED, hit["properties"])
                for pf, doc in hit.get("property_files", {}).items():
                    ctx.property_files[(name, pf)] = doc
                self.echo(f"{name}: cached")
                return
        self.echo(f"{name}: running")
        job_dir = self.work_dir / ctx.execution["PipelineExecutionId"] / name
        if job_dir.exists():
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        try:
            properties, files = runners[kind](name, step, args, job_dir, ctx)
        except Exception:
            ctx.steps[name] = StepRun(name, kind, FAILED)
            raise
        ctx.steps[name] = StepRun(name, kind, SUCCEEDED, properties)
        for pf, doc in files.items():
            ctx.property_files[(name, pf)] = doc
        if key is not None:
            self._cache_store(name, key, ctx, properties, files)
        self.echo(f"{name}: succeeded")

    # -- cache ----------------------------------------------------------------------------
    def _cache_key(self, name: str, step: Mapping[str, Any], ctx: Context) -> str:
        body = {
            "Type": step["Type"],
            "Arguments": resolve(
                step["Arguments"], ctx, where=f"step {name}", symbolic_execution=True
            ),
            "PropertyFiles": step.get("PropertyFiles", []),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()

    def _cache_record_key(self, name: str, key: str) -> str:
        return f"{PIPELINES_PREFIX}{self.pipeline_name}/cache/{name}/{key}.json"

    def _cache_hit(self, name: str, key: str, expire_after: str | None) -> dict[str, Any] | None:
        record_key = self._cache_record_key(name, key)
        if not self.store.exists(self.artifacts_bucket, record_key):
            return None
        record: dict[str, Any] = json.loads(self.store.get_bytes(self.artifacts_bucket, record_key))
        if expire_after:
            made = dt.datetime.fromisoformat(record["created"])
            if dt.datetime.now(dt.UTC) - made > _duration(expire_after):
                return None
        for uri in record.get("outputs", []):
            bucket, prefix = _split_s3(uri, f"step {name} cache")
            if not self.store.prefix_exists(bucket, prefix):
                return None
        return record

    def _cache_store(
        self,
        name: str,
        key: str,
        ctx: Context,
        properties: dict[str, Any],
        files: dict[str, Any],
    ) -> None:
        outputs = properties.get("_outputs", [])
        record = {
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "execution_id": ctx.execution["PipelineExecutionId"],
            "properties": properties,
            "property_files": files,
            "outputs": outputs,
        }
        self.store.put_bytes(
            self.artifacts_bucket,
            self._cache_record_key(name, key),
            json.dumps(record, sort_keys=True).encode("utf-8"),
            tags=self._tags(ctx, name),
            content_type="application/json",
        )

    def _record(self, result: ExecutionResult) -> None:
        """Write the execution's record (statuses only: no data, no parameters' PHI)."""
        doc = {
            "execution_id": result.execution_id,
            "status": result.status,
            "failure": result.failure,
            "steps": {n: r.status for n, r in result.steps.items()},
        }
        key = f"{PIPELINES_PREFIX}{self.pipeline_name}/executions/{result.execution_id}.json"
        with contextlib.suppress(Exception):  # a record failure must not mask the outcome
            self.store.put_bytes(
                self.artifacts_bucket,
                key,
                json.dumps(doc, indent=1).encode("utf-8"),
                tags={TAG_RUN_ID: result.execution_id, TAG_STEP: "pipeline"},
                content_type="application/json",
            )

    # -- S3 folders -------------------------------------------------------------------------
    def _tags(self, ctx: Context, step: str) -> dict[str, str]:
        return {TAG_RUN_ID: ctx.execution["PipelineExecutionId"], TAG_STEP: step}

    def _download(self, uri: str, target: Path, where: str) -> int:
        """Download every object under an S3 prefix (or one object) into ``target``."""
        bucket, prefix = _split_s3(uri, where)
        # a prefix's objects land relative to it; one object (a key) lands by its name
        if not prefix or prefix.endswith("/"):
            base = prefix
        else:
            base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        target.mkdir(parents=True, exist_ok=True)
        paths: dict[str, tuple[Path, int]] = {}
        for page in self.store.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                key = str(obj["Key"])
                if key.endswith("/"):
                    continue
                path = (target / key[len(base) :]).resolve()
                if target.resolve() not in path.parents:
                    raise LocalRunError(f"{where}: object {key} would land outside {target}")
                path.parent.mkdir(parents=True, exist_ok=True)
                paths[key] = (path, int(obj.get("Size", 0)))

        def fetch(key: str) -> None:
            path, size = paths[key]
            if size <= SMALL_OBJECT_BYTES:  # one GET (a transfer's HEAD + GET doubles it)
                path.write_bytes(self.store.get_bytes(bucket, key))
            else:
                self.store.download_file(bucket, key, str(path))

        if not paths:
            raise StepFailed(f"{where}: no objects at {uri}")
        # several at a time, as SageMaker fetches an input: one by one, a prefix of
        # thousands of small objects (the per-sample VAF histograms) took 10-20 ms each
        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            list(pool.map(fetch, paths))
        return len(paths)

    def _upload(self, folder: Path, uri: str, ctx: Context, step: str) -> int:
        bucket, prefix = _split_s3(uri, f"step {step} output")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        count = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            self.store.upload_file(str(path), bucket, key, tags=self._tags(ctx, step))
            count += 1
        return count

    @staticmethod
    def _local(job_dir: Path, container_path: str) -> Path:
        return job_dir / container_path.lstrip("/")

    def _map_args(self, job_dir: Path, args: Sequence[Any]) -> list[str]:
        out = []
        for a in args:
            text = as_text(a)
            out.append(str(self._local(job_dir, text)) if text.startswith("/opt/ml/") else text)
        return out

    # -- step types -------------------------------------------------------------------------
    def _processing(
        self,
        name: str,
        step: Mapping[str, Any],
        args: dict[str, Any],
        job_dir: Path,
        ctx: Context,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        where = f"step {name}"
        app = args["AppSpecification"]
        entry = list(app.get("ContainerEntrypoint", []))
        if len(entry) < 3 or Path(entry[0]).name not in ("python", "python3") or entry[1] != "-m":
            raise LocalRunError(f"{where}: ContainerEntrypoint must be python -m <module>")
        module = _repo_module(entry[2], where)
        argv = self._map_args(job_dir, [*entry[3:], *app.get("ContainerArguments", [])])
        for item in args.get("ProcessingInputs", []):
            s3 = item.get("S3Input")
            if s3 is None:
                raise LocalRunError(f"{where}: input {item.get('InputName')}: S3 inputs only")
            n = self._download(
                s3["S3Uri"],
                self._local(job_dir, s3["LocalPath"]),
                f"{where} input {item['InputName']}",
            )
            self.echo(f"{name}: input {item['InputName']}: {n} object(s)")
        outputs = args.get("ProcessingOutputConfig", {}).get("Outputs", [])
        for item in outputs:
            self._local(job_dir, item["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
        env = {
            **self.environment,
            **{k: as_text(v) for k, v in args.get("Environment", {}).items()},
        }
        with set_environment(env):
            _call_main(module, argv, where)
        uris = []
        for item in outputs:
            folder = self._local(job_dir, item["S3Output"]["LocalPath"])
            self._upload(folder, item["S3Output"]["S3Uri"], ctx, name)
            uris.append(item["S3Output"]["S3Uri"])
        files: dict[str, Any] = {}
        for pf in step.get("PropertyFiles", []):
            match = [o for o in outputs if o["OutputName"] == pf["OutputName"]]
            if not match:
                raise LocalRunError(
                    f"{where}: property file {pf['PropertyFileName']} names "
                    f"unknown output {pf['OutputName']}"
                )
            path = self._local(job_dir, match[0]["S3Output"]["LocalPath"]) / pf["FilePath"]
            try:
                files[pf["PropertyFileName"]] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise StepFailed(f"{where}: property file {path}: {e}") from e
        properties = {
            **args,
            "ProcessingJobName": f"pipelines-{ctx.execution['PipelineExecutionId']}-{name}",
            "ProcessingJobStatus": "Completed",
            "_outputs": uris,
        }
        return properties, files

    def _training(
        self,
        name: str,
        step: Mapping[str, Any],
        args: dict[str, Any],
        job_dir: Path,
        ctx: Context,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        job = f"pipelines-{ctx.execution['PipelineExecutionId']}-{name}".lower()
        return self._training_job(name, job, args, job_dir, ctx), {}

    def _training_job(
        self, name: str, job: str, args: dict[str, Any], job_dir: Path, ctx: Context
    ) -> dict[str, Any]:
        """Run one script-mode training job ``job`` of ``args``; return its properties."""
        where = f"step {name}" if job_dir.name == name else f"step {name} job {job}"
        env_args = {k: as_text(v) for k, v in args.get("Environment", {}).items()}
        hps = {k: as_text(v) for k, v in args.get("HyperParameters", {}).items()}
        program = env_args.get("SAGEMAKER_PROGRAM") or hps.pop("sagemaker_program", "")
        if not program.endswith(".py"):
            raise LocalRunError(f"{where}: no SAGEMAKER_PROGRAM script (training/train.py)")
        module = _repo_module(program[:-3].replace("/", "."), where)
        channels = []
        env: dict[str, str] = {}
        for channel in args.get("InputDataConfig", []):
            cname = channel["ChannelName"]
            folder = job_dir / "input" / "data" / cname
            n = self._download(
                channel["DataSource"]["S3DataSource"]["S3Uri"], folder, f"{where} channel {cname}"
            )
            self.echo(f"{name}: channel {cname}: {n} object(s)")
            env[f"SM_CHANNEL_{cname.upper()}"] = str(folder)
            channels.append(cname)
        model_dir, output_dir = job_dir / "model", job_dir / "output" / "data"
        model_dir.mkdir(parents=True)
        output_dir.mkdir(parents=True)
        checkpoint = args.get("CheckpointConfig")
        ckpt_dir = job_dir / "checkpoints"
        ckpt_dir.mkdir()
        if checkpoint:
            bucket, prefix = _split_s3(checkpoint["S3Uri"], f"{where} checkpoints")
            if self.store.prefix_exists(bucket, prefix):
                self._download(checkpoint["S3Uri"], ckpt_dir, f"{where} checkpoints")
        env.update(
            {
                "TRAINING_JOB_NAME": job,
                "SM_CHANNELS": json.dumps(channels),
                "SM_MODEL_DIR": str(model_dir),
                "SM_OUTPUT_DATA_DIR": str(output_dir),
                "SM_CHECKPOINT_DIR": str(ckpt_dir),
                "SM_HPS": json.dumps(hps),
                "SM_CURRENT_HOST": "algo-1",
            }
        )
        argv = [x for k, v in hps.items() for x in (f"--{k}", v)]
        with set_environment({**self.environment, **env_args, **env}):
            _call_main(module, argv, where)
        out_uri = str(args["OutputDataConfig"]["S3OutputPath"]).rstrip("/") + f"/{job}/output/"
        bucket, prefix = _split_s3(out_uri, f"{where} output")
        artifacts = {}
        for archive, folder in (("model.tar.gz", model_dir), ("output.tar.gz", output_dir)):
            path = job_dir / archive
            with tarfile.open(path, "w:gz") as tar:
                for item in sorted(folder.iterdir()):
                    tar.add(item, arcname=item.name)
            self.store.upload_file(str(path), bucket, prefix + archive, tags=self._tags(ctx, name))
            artifacts[archive] = f"s3://{bucket}/{prefix}{archive}"
        if checkpoint:
            self._upload(ckpt_dir, checkpoint["S3Uri"], ctx, name)
        metrics: list[dict[str, Any]] = []
        metrics_file = output_dir / "metrics.json"
        if metrics_file.exists():
            best = json.loads(metrics_file.read_text(encoding="utf-8")).get("best_val_auc")
            if isinstance(best, int | float):
                metrics.append({"MetricName": "validation:auc", "Value": float(best)})
        properties = {
            **args,
            "TrainingJobName": job,
            "TrainingJobStatus": "Completed",
            "ModelArtifacts": {"S3ModelArtifacts": artifacts["model.tar.gz"]},
            "FinalMetricDataList": metrics,
            "_outputs": [artifacts["model.tar.gz"]],
        }
        return properties

    def _tuning(
        self,
        name: str,
        step: Mapping[str, Any],
        args: dict[str, Any],
        job_dir: Path,
        ctx: Context,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a Tuning step's trials one after another; the best one's job is the result.

        SageMaker's Bayesian search is a managed service: here the trials' hyperparameters
        are drawn at random from the ranges (seeded by execution and step, so a rerun
        draws the same), :data:`LOCAL_TUNING_STRATEGY`. Each trial is a training job
        like a Training step's, named ``<tuning job>-NNN``; its objective is read from the
        trial's ``metrics.json`` (``validation:auc`` = ``best_val_auc``).
        """
        where = f"step {name}"
        config = args["HyperParameterTuningJobConfig"]
        objective = config["HyperParameterTuningJobObjective"]
        if objective.get("MetricName") != "validation:auc":
            raise LocalRunError(
                f"{where}: locally only the objective validation:auc can be read "
                f"(metrics.json), not {objective.get('MetricName')!r}"
            )
        maximise = objective.get("Type", "Maximize") == "Maximize"
        trials = int(config["ResourceLimits"]["MaxNumberOfTrainingJobs"])
        definition = args["TrainingJobDefinition"]
        ranges = config.get("ParameterRanges") or definition.get("HyperParameterRanges") or {}
        tuning_job = f"pipelines-{ctx.execution['PipelineExecutionId'][-12:]}".lower()[:32]
        rng = random.Random(f"{ctx.execution['PipelineExecutionId']}/{name}")
        summaries: list[dict[str, Any]] = []
        for i in range(1, trials + 1):
            tuned = _draw(ranges, rng, where)
            job = f"{tuning_job}-{i:03d}"
            trial_args = {
                **{k: v for k, v in definition.items() if k != "StaticHyperParameters"},
                "HyperParameters": {**definition.get("StaticHyperParameters", {}), **tuned},
            }
            self.echo(
                f"{name}: trial {i}/{trials}: {', '.join(f'{k}={v}' for k, v in tuned.items())}"
            )
            props = self._training_job(name, job, trial_args, job_dir / job, ctx)
            value = next(
                (m["Value"] for m in props["FinalMetricDataList"]
                 if m["MetricName"] == "validation:auc"),
                None,
            )  # fmt: skip
            if value is None:
                raise StepFailed(f"{where} job {job}: no validation:auc (no validation split?)")
            self.echo(f"{name}: trial {i}/{trials}: validation:auc={value:.4f}")
            summaries.append({
                "TrainingJobName": job,
                "TrainingJobStatus": "Completed",
                "TunedHyperParameters": tuned,
                "FinalHyperParameterTuningJobObjectiveMetric": {
                    "MetricName": "validation:auc", "Value": value},
                "_model": props["ModelArtifacts"]["S3ModelArtifacts"],
            })  # fmt: skip
        summaries.sort(key=lambda t: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
                       reverse=maximise)  # fmt: skip
        best = summaries[0]
        self.echo(f"{name}: best {best['TrainingJobName']}")
        properties = {
            **args,
            "HyperParameterTuningJobName": tuning_job,
            "HyperParameterTuningJobStatus": "Completed",
            "BestTrainingJob": {k: v for k, v in best.items() if k != "_model"},
            "TrainingJobSummaries": [{k: v for k, v in t.items() if k != "_model"}
                                     for t in summaries],
            "_outputs": [best["_model"]],
        }  # fmt: skip
        return properties, {}

    def _register(
        self,
        name: str,
        step: Mapping[str, Any],
        args: dict[str, Any],
        job_dir: Path,
        ctx: Context,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        group = str(args.get("ModelPackageGroupName") or "")
        if not group:
            raise LocalRunError(f"step {name}: RegisterModel needs ModelPackageGroupName")
        prefix = f"{MODEL_REGISTRY_PREFIX}{group}/"
        version = 1 + sum(
            1 for k in self.store.list_keys(self.artifacts_bucket, prefix) if k.endswith(".json")
        )
        arn = f"arn:aws:sagemaker:{self.region}:{LOCAL_ACCOUNT}:model-package/{group}/{version}"
        package = {
            "ModelPackageArn": arn,
            "ModelPackageGroupName": group,
            "ModelPackageVersion": version,
            "ModelApprovalStatus": args.get("ModelApprovalStatus", "PendingManualApproval"),
            "CreationTime": dt.datetime.now(dt.UTC).isoformat(),
            "PipelineExecutionId": ctx.execution["PipelineExecutionId"],
            **{k: v for k, v in args.items() if k not in ("ModelApprovalStatus",)},
        }
        key = f"{prefix}{version:06d}.json"
        self.store.put_bytes(
            self.artifacts_bucket,
            key,
            json.dumps(package, indent=1).encode("utf-8"),
            tags=self._tags(ctx, name),
            content_type="application/json",
        )
        self.echo(f"{name}: model package {group}/{version} ({package['ModelApprovalStatus']})")
        return {
            "ModelPackageArn": arn,
            "ModelPackageVersion": version,
            "_record": f"s3://{self.artifacts_bucket}/{key}",
        }, {}


def model_packages(store: Any, artifacts_bucket: str, group: str) -> list[dict[str, Any]]:
    """Return the locally registered packages of a model package group, oldest first."""
    prefix = f"{MODEL_REGISTRY_PREFIX}{group}/"
    keys = sorted(k for k in store.list_keys(artifacts_bucket, prefix) if k.endswith(".json"))
    return [json.loads(store.get_bytes(artifacts_bucket, k)) for k in keys]
