"""Measure one sweep point in its own process: `python -m vidprune.point REQUEST.json ROW.json`.

REQUEST.json holds `{"spec": {...}, "point": {...}}` (see executors.point_request); the row is written
to ROW.json only once it is complete, so a process that dies leaves no row and the parent records the
point as failed with the signal or exit code. `measure_request` is also what a Ray task or a Slurm
array task runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from vidprune.errors import VidpruneError
from vidprune.runner import Runner, failure_row
from vidprune.spec import Point, spec_from_dict


def measure_request(request: dict) -> dict:
    spec = spec_from_dict(request["spec"])
    point = Point(**request["point"])
    try:
        runner = Runner(spec)  # resolves the device here, on the machine that measures
    except VidpruneError as exc:
        return failure_row(spec, point, {"backbone": spec.backbone, "device": str(spec.device)}, str(exc))
    return runner.measure(point)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m vidprune.point REQUEST.json ROW.json", file=sys.stderr)
        return 2
    request_path, row_path = (Path(a) for a in argv)
    row = measure_request(json.loads(request_path.read_text()))
    tmp = row_path.with_name(row_path.name + ".tmp")
    tmp.write_text(json.dumps(row, default=str))
    os.replace(tmp, row_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
