"""Parsing speed of the IR text form: MB/s and peak memory per byte for a large dump.

The dump is light ResNet-50's statements repeated with fresh names (``big_dump`` in
tests/ir/test_text_limits.py, which checks that it round-trips), about 5 MB at 60 copies.
Speed is the best of ``--reps`` parses in CPU time (``time.process_time``), so other load
on the machine changes it little. Never run as a test.

    python bench/parse_speed.py              # 60 copies, 3 reps
    python bench/parse_speed.py --copies 250 # about 21 MB
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from effc.ir.parser import parse_module
    from tests.ir.test_text_limits import big_dump

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    text = big_dump(args.copies)
    mb = len(text.encode()) / 1e6
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(args.reps):
        start = time.process_time()
        parse_module(text)
        best = min(best, time.process_time() - start)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    print(f"{mb:.1f} MB dump: best of {args.reps} parses {best:.2f} s CPU = {mb / best:.2f} MB/s; "
          f"peak memory grew {grown / 1e6:.0f} MB ({grown / (mb * 1e6):.1f} bytes per byte of text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
