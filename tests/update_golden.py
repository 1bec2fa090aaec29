"""Rewrite the ``// EXPECT:`` sections of the pass golden tests from what the passes print now.

    python tests/update_golden.py                 # every case under tests/passes/
    python tests/update_golden.py fuse/silu ...   # only these (pass/case, or a path)

Then review the changes with ``git diff tests/passes``: an expectation is only right when
the output is what the pass's rules say it must be."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effc.ir.printer import print_module  # noqa: E402
from tests.golden import CASES_DIR, discover, load_case, run_case, write_expect  # noqa: E402


def _select(args: list[str]) -> list[Path]:
    if not args:
        return discover()
    paths = []
    for a in args:
        p = Path(a)
        paths.append(p if p.suffix == ".effc" else CASES_DIR / f"{a}.effc")
    return paths


def main(args: list[str]) -> int:
    failed = 0
    for path in _select(args):
        case = load_case(path)
        try:
            _, after = run_case(case)
        except Exception as e:  # report every broken case, keep going
            print(f"FAILED  {case.id}: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(("updated " if write_expect(case, print_module(after)) else "same    ") + case.id)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
