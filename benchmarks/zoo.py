"""The zoo's score: caught / located / diagnosed right / diagnosed wrong, and the twins.

    python benchmarks/zoo.py [--zoo FOLDER] [--method central] [--directions K] [--verbose]

Every ``*.yaml`` of the folder (default ``tests/zoo``; ``--zoo tests/zoo_unseen`` for the bugs
written without looking at the catalogue) is checked with ``--plugins`` (the layers are the
folder's own module, e.g. tests/zoo/zoo_layers.py).
A bug's file says in comments which layer is wrong (``# culprit: 1 (ZooPool)``) and a phrase
its diagnosis must contain (``# expect: stride²``).  A bug is *caught* if the check fails,
*located* if localisation names that layer, *diagnosed right* if a diagnosis line of that
layer contains the phrase, *diagnosed wrong* if it states a diagnosis without it (a
``no known pattern`` line is neither).  ``# expect: -`` marks a bug no catalogue entry
describes (written after the catalogue, to test it): its only right answer is ``no known
pattern``, so any stated diagnosis counts as wrong.  A twin (``twin_*.yaml``) must pass.  A
config the method cannot run (``--method complex`` through a layer without complex
arithmetic) is counted as *not available*, not scored.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnngrad.checker import check  # noqa: E402
from cnngrad.config import ConfigError  # noqa: E402
from cnngrad.diagnose import NO_PATTERN  # noqa: E402

ZOO = ROOT / "tests" / "zoo"


def expectations(path: Path) -> dict[str, str]:
    """The ``# key: value`` comments at the top of a zoo config."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ":" in line:
            key, value = line[2:].split(":", 1)
            out[key.strip()] = value.strip()
    return out


@dataclass
class Outcome:
    name: str
    twin: bool
    unknown: bool
    caught: bool
    located: bool
    right: bool
    wrong: bool
    diagnoses: list[str]
    localisation: str


def run(path: Path, **options) -> Outcome:
    """Check one zoo config and score it."""
    want = expectations(path)
    report = check(str(path), plugins=True, **options)
    twin = path.stem.startswith("twin_")
    said = [t for r in report.rows for t in r.diagnosis]
    stated = [t for t in said if not t.startswith(NO_PATTERN)]
    phrase = want.get("expect", "")
    unknown = phrase == "-"
    right = (not stated and bool(said)) if unknown else bool(phrase) and any(phrase in t for t in stated)
    return Outcome(path.stem, twin, unknown, report.return_code == 1,
                   bool(want.get("culprit")) and report.localisation.startswith(f"layer {want.get('culprit')}:"),
                   right, bool(stated) and not right, said, report.localisation)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=ZOO, help="folder of zoo configs (default tests/zoo)")
    ap.add_argument("--method", default=None)
    ap.add_argument("--directions", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    paths = sorted(args.zoo.glob("*.yaml"))
    if not paths:
        ap.error(f"--zoo {args.zoo}: no *.yaml configs there")
    outcomes, unavailable = [], []
    for p in paths:
        try:
            outcomes.append(run(p, method=args.method, directions=args.directions))
        except ConfigError as e:  # e.g. --method complex on a layer that cannot run complex arithmetic
            unavailable.append(p.stem)
            print(f"{p.stem}: not available: {e}")
    bugs = [o for o in outcomes if not o.twin]
    twins = [o for o in outcomes if o.twin]
    for o in outcomes:
        if args.verbose or (o.twin and o.caught) or (not o.twin and not (o.caught and o.located and o.right)):
            mark = ("twin FAILED" if o.caught else "twin ok") if o.twin else \
                f"caught={o.caught} located={o.located} right={o.right} wrong={o.wrong}"
            print(f"{o.name}: {mark}\n    {o.localisation}\n" + "".join(f"    {d}\n" for d in o.diagnoses), end="")
    n, unknown = len(bugs), [o for o in bugs if o.unknown]
    print(f"{args.zoo.name}: {n} bugs ({len(unknown)} outside the catalogue: 'no known pattern' is right for them)"
          f" · caught {sum(o.caught for o in bugs)}/{n} · located {sum(o.located for o in bugs)}/{n} · "
          f"diagnosed right {sum(o.right for o in bugs)}/{n} · diagnosed wrong {sum(o.wrong for o in bugs)}/{n} · "
          f"twins passing {sum(not o.caught for o in twins)}/{len(twins)}"
          + (f" · not available {len(unavailable)}" if unavailable else ""))
    ok = all(o.caught and o.located and not o.wrong for o in bugs) and not any(o.caught for o in twins)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
