"""How long the toolkit itself takes for FLOP counting, as the CLI runs it (one process per sweep).

Times, in fresh processes:
  * the CLI's start-up (`python -c "import vidprune.cli"`), paid once per `vidprune` command;
  * `vidprune sweep --method evad --backbone vit-l --metrics flops --keep 0.7` (ViT-L 16x224, 2 models);
  * a flops-only sweep of every method with a knob at five keep rates on its default backbone
    (`vidprune sweep --method M --keep 0.5,0.6,0.7,0.8,0.9 --metrics flops`), and its total.
Issue #7's target: the whole flops-only sweep in under a minute on 2 CPU cores.

    python benchmarks/toolkit_overhead.py                 # everything
    python benchmarks/toolkit_overhead.py --skip-vit-l --methods evad,sttm
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

KEEPS = "0.5,0.6,0.7,0.8,0.9"
KNOB_METHODS = ("random", "evad", "poguise", "sttm", "mads", "sllm")
KNOB_VALUES = {"sllm": "1,2,3,4,6"}  # its knob is the sampling stride r >= 1, not a keep rate


def timed_run(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def sweep(out: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "vidprune", "sweep", *options, "--metrics", "flops", "--out", out]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(KNOB_METHODS))
    parser.add_argument("--skip-vit-l", action="store_true")
    args = parser.parse_args(argv)

    print(f"{os.cpu_count()} CPUs; load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as out:
        startup = timed_run([sys.executable, "-c", "import vidprune.cli"])
        print(f"CLI start-up (import vidprune.cli): {startup:.1f} s", flush=True)
        if not args.skip_vit_l:
            seconds = timed_run(sweep(out, "--method", "evad", "--backbone", "vit-l", "--keep", "0.7"))
            print(f"evad on vit-l 16x224, flops only (none + evad 0.7): {seconds:.1f} s", flush=True)
        total = 0.0
        for method in [m for m in args.methods.split(",") if m]:
            seconds = timed_run(sweep(out, "--method", method, "--keep", KNOB_VALUES.get(method, KEEPS)))
            total += seconds
            print(f"{method}: none + 5 knob values, flops only: {seconds:.1f} s", flush=True)
        print(f"flops-only sweep of {args.methods}, five knob values each: {total:.1f} s in total "
              f"(target < 60 s on 2 cores; includes {startup:.1f} s start-up per method)")


if __name__ == "__main__":
    main()
