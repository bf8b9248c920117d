"""``python -m soak [--seed N] [--minutes M | --seconds S] [--replay LOG] [--log-dir DIR]``: one soak run.

Prints one line (seed, operations, faults, lost / doubled / wrong) and exits 0 when all three are 0, 1 when a
promise was broken, 2 when the run could not be made (no Postgres binaries, no redis-server).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from soak.history import read_log
from soak.run import Config, main_line, run
from soak.world import Shape

QUICK = Shape(deadlines=(("image", 12.0), ("video", 20.0), ("audio", 15.0)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: drawn, and printed)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="minutes of load (default 10)")
    length.add_argument("--seconds", type=float, default=None, help="seconds of load (for short runs)")
    p.add_argument("--replay", type=Path, default=None, help="replay the schedule of this log (its seed and shape)")
    p.add_argument("--log-dir", type=Path, default=Path("soak-logs"), help="where runs keep their logs")
    p.add_argument("--apis", type=int, default=2, help="API processes (default 2)")
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--quick", action="store_true", help="short deadlines (image 12 s, video 20 s), for CI")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs of a run that passes")
    return p


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so that every process and temp directory is cleaned up.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    plan = None
    if args.replay is not None:
        header, plan = read_log(args.replay)
        seed = int(header["seed"])
        duration = float(header["duration"])
        shape = Shape.from_json(header["shape"])
    else:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
        duration = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 10.0)
        base = QUICK if args.quick else Shape()
        shape = Shape(apis=args.apis, workers=args.workers, deadlines=base.deadlines)
    if duration <= 0 or shape.apis < 1 or shape.workers < 1:
        print("soak: --minutes/--seconds, --apis and --workers must be positive", file=sys.stderr)
        return 2
    run_dir = args.log_dir / f"seed-{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    cfg = Config(seed, duration, shape, run_dir, plan, args.keep_logs)
    try:
        result = run(cfg)
    except KeyboardInterrupt:
        print(f"soak seed={seed}: interrupted; everything it started is stopped (log in {run_dir})", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"soak seed={seed}: could not run: {e}", file=sys.stderr)
        return 2
    return main_line(result)


if __name__ == "__main__":
    sys.exit(main())
