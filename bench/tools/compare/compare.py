#!/usr/bin/env python3
"""Paired comparison of two builds' P1 results written by abba.sh.

Usage: compare.py OUT

For each placement and crate contender: the median over runs of each
build's paired p50 (and p99) ratio to its floor, the median of the
per-pair differences (b - a) and in how many pairs b was above a.
"""
import json
import statistics as st
import sys
from pathlib import Path

CONTENDERS = ["attribute", "Locker, guard dropped", "Locker, release().await"]


def ratios(run_dir):
    j = json.loads((run_dir / "bench-results.json").read_text())
    out = {}
    for p in j["p1"]["placements"]:
        for name in CONTENDERS:
            r = p["ratios"][name]["vs_floor"]
            for q in ("p50", "p99"):
                out[(q, p["slug"], name)] = r[q]["median"]
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = Path(sys.argv[1])
    pairs = sorted(
        int(d.name[2:]) for d in out.glob("a-*") if d.is_dir() and (out / f"b-{d.name[2:]}").is_dir()
    )
    if not pairs:
        sys.exit(f"no complete pairs in {out}")
    a = [ratios(out / f"a-{i}") for i in pairs]
    b = [ratios(out / f"b-{i}") for i in pairs]
    print(f"{len(pairs)} pairs; paired ratio to the floor, median over runs (range); b - a per pair")
    for key in sorted(a[0], key=lambda k: (k[0], k[1] != "same-cpu", CONTENDERS.index(k[2]))):
        xa = [r[key] for r in a]
        xb = [r[key] for r in b]
        d = [y - x for x, y in zip(xa, xb)]
        above = sum(v > 0 for v in d)
        print(
            f"{key[0]} {key[1]:9s} {key[2]:24s} a {st.median(xa):.3f} ({min(xa):.3f}-{max(xa):.3f})"
            f"  b {st.median(xb):.3f} ({min(xb):.3f}-{max(xb):.3f})"
            f"  b-a {st.median(d):+.4f}, b above a in {above}/{len(d)}"
        )


if __name__ == "__main__":
    main()
