"""Where a sweep's points run: in this process, one process per point, Ray tasks or a Slurm job array.

Every executor yields `(point, row)` as points finish, so the caller persists each row at once and a
progress bar moves with completions. A point whose process, task or job dies without producing a row
(a crash in native code, the kernel's out-of-memory killer, a lost node) becomes a `failed` row that
says so, and the sweep goes on. Ray and submitit are optional extras, imported only when chosen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import vidprune
from vidprune.errors import VidpruneError
from vidprune.measure.device import is_device_name
from vidprune.point import measure_request
from vidprune.runner import Runner, failure_row
from vidprune.spec import Point, SweepSpec, spec_to_dict

EXECUTORS = ("local", "subprocess", "ray", "slurm")
REMOTE_EXECUTORS = ("ray", "slurm")


def check_executor(executor: str, spec: SweepSpec, options: dict) -> None:
    if executor not in EXECUTORS:
        raise VidpruneError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'.")
    if executor in REMOTE_EXECUTORS:
        device = str(spec.device).strip().lower()
        if not is_device_name(device):
            raise VidpruneError(f"unknown device '{spec.device}'. Use one of: cpu, cuda, mps, auto.")
        if device.startswith("cuda:"):
            raise VidpruneError(f"--executor {executor} gives every point one GPU of its own, so it sees that GPU "
                                f"as cuda: use --device cuda instead of --device {device}.")


def validation_runner(spec: SweepSpec, executor: str) -> Runner:
    """The runner that checks the spec (and measures, for local and subprocess).

    With Ray or Slurm the points run elsewhere: the driver (a login node, a laptop) need not have the
    device, so everything but the device is checked here and the device on the worker.
    """
    if executor in REMOTE_EXECUTORS:
        return Runner(dataclasses.replace(spec, device="cpu"))
    return Runner(spec)


def point_request(spec: SweepSpec, point: Point) -> dict:
    return {"spec": spec_to_dict(spec), "point": dataclasses.asdict(point)}


def remote_shared(runner: Runner, spec: SweepSpec) -> dict:
    """What a failure row of a remote point can truthfully say: not the driver's device."""
    shared = dict(runner.shared, device=str(spec.device), device_name=None)
    return shared


def is_gpu_point(spec: SweepSpec) -> bool:
    return str(spec.device).strip().lower().startswith("cuda")


def measure_points(executor: str, spec: SweepSpec, runner: Runner, points: list[Point],
                   options: dict) -> Iterator[tuple[Point, dict]]:
    if executor == "local":
        for point in points:
            yield point, runner.measure(point)
    elif executor == "subprocess":
        for point in points:
            yield point, measure_in_subprocess(spec, point, runner.shared, timeout=options.get("timeout"))
    elif executor == "ray":
        yield from _ray_rows(spec, points, remote_shared(runner, spec), options)
    elif executor == "slurm":
        yield from _slurm_rows(spec, points, remote_shared(runner, spec), options)
    else:
        raise VidpruneError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{executor}'.")


# ------------------------------------------------------------------------------ one process per point


def _describe_exit(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = " (a crash in native code, or the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"the point's process was killed by {name}{why}"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"the point's process exited with code {returncode}" + (f": {last[-1].strip()}" if last else "")


def measure_in_subprocess(spec: SweepSpec, point: Point, shared: dict, timeout: Optional[float] = None) -> dict:
    """Measure one point in a fresh `python -m vidprune.point` process: a clean CUDA context, the exact
    peak memory of this point alone, and a crash that takes down this point only."""
    env = dict(os.environ)
    # The child must import this very vidprune, also from a checkout that is not installed.
    package_root = str(Path(vidprune.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="vidprune-point-") as tmp:
        request, out = Path(tmp) / "request.json", Path(tmp) / "row.json"
        request.write_text(json.dumps(point_request(spec, point)))
        try:
            proc = subprocess.run([sys.executable, "-m", "vidprune.point", str(request), str(out)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return failure_row(spec, point, shared, f"the point's process ran past the {timeout:g} s limit")
        if proc.returncode == 0 and out.is_file():
            return json.loads(out.read_text())
        return failure_row(spec, point, shared, _describe_exit(proc.returncode, proc.stderr or ""))


# ------------------------------------------------------------------------------------------------ Ray


def parse_resources(text: Optional[str]) -> dict:
    """`jetson=1,fast_disk=0.5` -> {"jetson": 1.0, "fast_disk": 0.5} (Ray custom resources)."""
    resources: dict = {}
    for item in [i.strip() for i in (text or "").split(",") if i.strip()]:
        name, sep, amount = item.partition("=")
        try:
            resources[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            raise VidpruneError(f"--ray-resources '{item}' must look like name=amount, e.g. jetson=1.") from None
        if not name.strip() or resources[name.strip()] <= 0:
            raise VidpruneError(f"--ray-resources '{item}' must look like name=amount with amount > 0, e.g. jetson=1.")
    return resources


def _ray_rows(spec: SweepSpec, points: list[Point], shared: dict, options: dict) -> Iterator[tuple[Point, dict]]:
    try:
        import ray
    except ImportError:
        raise VidpruneError("--executor ray needs Ray: pip install 'vidprune[ray]'.") from None

    started = False
    if not ray.is_initialized():
        address = options.get("ray_address")
        kwargs = {"address": address} if address else {"include_dashboard": False}
        try:
            ray.init(logging_level=logging.WARNING, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise VidpruneError(f"cannot start or join Ray (address {address or 'local'}): "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
                                "Check --ray-address (e.g. ray://head:10001 or auto).") from None
        started = True
    try:
        gpus = 1 if is_gpu_point(spec) else 0
        if str(spec.device).strip().lower() == "auto" and ray.cluster_resources().get("GPU", 0) > 0:
            gpus = 1
        resources = parse_resources(options.get("ray_resources"))
        # max_retries=0: a point that crashes its worker is a result (a failed row), not something to repeat.
        task = ray.remote(max_retries=0)(measure_request)
        pending = {}
        for point in points:
            ref = task.options(num_gpus=gpus, num_cpus=options.get("ray_cpus", 1), resources=resources or None,
                               name=f"vidprune {point.label}").remote(point_request(spec, point))
            pending[ref] = point
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                point = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as exc:  # the task's worker died or the task raised: one failed point
                    text = str(exc).strip().splitlines()
                    row = failure_row(spec, point, shared, f"Ray task failed: {type(exc).__name__}"
                                      + (f": {text[0]}" if text else ""))
                yield point, row
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------- Slurm (submitit)


def parse_slurm_options(items: list[str]) -> dict:
    """`--slurm-option key=value` items; values read as JSON where they parse (numbers, true, lists)."""
    result: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VidpruneError(f"--slurm-option '{item}' must look like key=value, e.g. slurm_partition=gpu.")
        try:
            result[key.strip()] = json.loads(value)
        except ValueError:
            result[key.strip()] = value
    return result


def _slurm_rows(spec: SweepSpec, points: list[Point], shared: dict, options: dict) -> Iterator[tuple[Point, dict]]:
    try:
        import submitit
    except ImportError:
        raise VidpruneError("--executor slurm needs submitit: pip install 'vidprune[slurm]'.") from None

    params = dict(options.get("slurm_options") or {})
    folder = params.pop("folder", None) or options.get("slurm_folder") or "results/.submitit"
    cluster = params.pop("cluster", None)  # None: Slurm when sbatch is there; `local` runs on this machine
    poll = float(params.pop("poll_s", 2.0))
    settings = {"timeout_min": 60, "name": f"vidprune-{spec.method}", "slurm_array_parallelism": max(len(points), 1)}
    if is_gpu_point(spec):
        settings["gpus_per_node"] = 1
    settings.update(params)
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        executor.update_parameters(**settings)
    except (NameError, AssertionError, ValueError, TypeError, RuntimeError) as exc:
        raise VidpruneError(f"bad --slurm-option: {str(exc).strip().splitlines()[0]}. "
                            "See submitit's AutoExecutor.update_parameters for the keys.") from None
    if not points:
        return
    # One array job, one task per point.
    jobs = executor.map_array(measure_request, [point_request(spec, point) for point in points])
    pending = list(zip(jobs, points))
    while pending:
        still = []
        for job, point in pending:
            if not job.done():
                still.append((job, point))
                continue
            try:
                row = job.result()
            except Exception as exc:  # the task died (signal, time limit, node failure): one failed point
                text = [line for line in str(exc).strip().splitlines() if line.strip()]
                row = failure_row(spec, point, shared, f"Slurm task {job.job_id} failed: {type(exc).__name__}"
                                  + (f": {text[0]}" if text else ""))
            yield point, row
        pending = still
        if pending:
            time.sleep(poll)
