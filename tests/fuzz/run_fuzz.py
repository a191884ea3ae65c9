"""Run the CLI fuzz suite outside pytest and print the category table.

    python tests/fuzz/run_fuzz.py                  # all cases; writes benchmarks/results/fuzz.txt
    python tests/fuzz/run_fuzz.py -k storage -v    # cases whose id contains "storage", one line each
    python tests/fuzz/run_fuzz.py --list           # the case ids and command lines, nothing run

The table (tried / clean / traceback / hang / other per category) and one line per failing case
are printed, and written to ``benchmarks/results/fuzz.txt`` when every case ran (no ``-k``).
Failing cases keep their folder (stdout.txt, stderr.txt) under the printed temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzlib  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--keyword", action="append", default=[], help="run only cases whose id contains this")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    ap.add_argument("--root", type=Path, help="working folder (default: a new temporary folder)")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/fuzz.txt")
    ns = ap.parse_args(argv)
    cases = fuzzlib.generate_cases()
    if ns.keyword:
        cases = [c for c in cases if any(k in c.id for k in ns.keyword)]
    if ns.list:
        for c in cases:
            print(f"{c.id}\t{' '.join(c.args)!r}")
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    shared = fuzzlib.default_shared()
    if shared is None:
        skipped = [c for c in cases if c.shared]
        cases = [c for c in cases if not c.shared]
        print(f"shared data folder not found: {len(skipped)} cases skipped", file=sys.stderr)
    root = ns.root or Path(tempfile.mkdtemp(prefix="embadvisor-fuzz-"))
    print(f"{len(cases)} cases; working folder {root}", file=sys.stderr)
    session = fuzzlib.FuzzSession(root, shared)
    try:
        session.start()
        for i, case in enumerate(cases):
            out = session.run(case)
            if ns.verbose or out.verdict != "clean":
                print(f"[{i + 1}/{len(cases)}] {out.verdict:9} rc={out.rc} {out.seconds:5.1f}s {case.id}"
                      + (f": {out.reason}" if out.reason else ""), file=sys.stderr, flush=True)
    finally:
        session.close()
    table = session.table()
    print(table, end="")
    if not ns.keyword and not ns.no_write:
        dest = fuzzlib.REPO / "benchmarks" / "results" / "fuzz.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(table, encoding="utf-8")
        print(f"wrote {dest}", file=sys.stderr)
    return 0 if all(o.verdict == "clean" for o in session.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
