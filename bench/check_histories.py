"""Check a folder of published histories against their recorded answers; print the tally and the speed.

    .venv/bin/python -m bench.check_histories [--histories ../shared/histories] [--suite porcupine/jepsen]
                                              [--porcupine PATH-TO-CHECKOUT] [--no-explanations]

The folder holds ``expected.tsv`` (file, ``linearizable`` or
``not-linearizable``) and a README naming the sources; the files are read in
place, never copied.  The model follows the folder: porcupine's ``kv`` suite is
a key-value map, everything else a compare-and-set register.  Each history is
checked twice: once with the search alone (``explain=False``, the figure that
compares with porcupine, which does not shrink counterexamples) and once as
``python -m harness check`` does, shrinking each failure (skipped with
``--no-explanations``).  States are the
(linearized set, model state) pairs the search memoised; states per CPU-second
count the search alone.  It measures; it asserts nothing.

With ``go`` on the PATH and ``--porcupine`` naming a porcupine checkout, it runs
porcupine's own etcd tests (``go test -run TestEtcdJepsen``) on the same files
(its ``test_data``) and prints the time ratio; otherwise it says why not.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.linearizability import CASRegister, HistoryInputError, KeyValue, Outcome, check, read_file

DEFAULT_HISTORIES = Path(__file__).resolve().parents[1].parent / "shared" / "histories"
MAX_STATES = 5_000_000
TIMEOUT_S = 120.0
PORCUPINE_TIMEOUT_S = 600
ANSWERS = {"linearizable": Outcome.OK, "not-linearizable": Outcome.ILLEGAL}


@dataclass
class SuiteTally:
    files: int = 0
    agree: int = 0
    disagree: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    states: int = 0
    search_cpu_s: float = 0.0
    explained_cpu_s: float = 0.0

    def line(self, name: str) -> str:
        rate = self.states / self.search_cpu_s if self.search_cpu_s > 0 else 0.0
        return (f"{name:28} {self.agree:3}/{self.files:<3} agree  {len(self.disagree):2} disagree  "
                f"{len(self.unknown):2} unknown  {self.states:>10} states  search {self.search_cpu_s:7.2f} CPU-s "
                f"({rate:,.0f} states/CPU-s)  with explanations {self.explained_cpu_s:7.2f} CPU-s")


def suite_of(name: str) -> str:
    return name.rsplit("/", 1)[0]


def model_for(name: str):
    return KeyValue() if "/kv/" in name else CASRegister()


def check_one(path: Path, name: str, answer: str, tally: SuiteTally, explain: bool) -> None:
    try:
        ops = read_file(path)
    except HistoryInputError as error:
        tally.files += 1
        tally.disagree.append(f"{name}: unreadable ({error})")
        return
    started = time.process_time()
    searched = check(ops, model_for(name), max_states=MAX_STATES, timeout_s=TIMEOUT_S, explain=False)
    tally.search_cpu_s += time.process_time() - started
    explained = searched
    if explain:
        started = time.process_time()
        explained = check(ops, model_for(name), max_states=MAX_STATES, timeout_s=TIMEOUT_S)
        tally.explained_cpu_s += time.process_time() - started
    tally.files += 1
    tally.states += searched.states
    if searched.outcome is Outcome.UNKNOWN or explained.outcome is Outcome.UNKNOWN:
        tally.unknown.append(f"{name}: {'; '.join(searched.reasons + explained.reasons)}")
    elif searched.outcome is ANSWERS[answer] and explained.outcome is ANSWERS[answer]:
        tally.agree += 1
    else:
        tally.disagree.append(f"{name}: published {answer}, checked {searched.outcome.value}")


def compare_with_porcupine(checkout: Path | None, etcd: SuiteTally | None, out) -> None:
    if shutil.which("go") is None:
        print("porcupine comparison: not run (no `go` on the PATH)", file=out)
        return
    if checkout is None or not (checkout / "porcupine_test.go").exists():
        print("porcupine comparison: not run (give --porcupine PATH to a porcupine checkout)", file=out)
        return
    started = time.monotonic()
    run = subprocess.run(["go", "test", "-count=1", "-run", "TestEtcdJepsen", "."], cwd=checkout,
                         capture_output=True, text=True, timeout=PORCUPINE_TIMEOUT_S)
    wall_s = time.monotonic() - started
    print(f"porcupine: go test -run TestEtcdJepsen exited {run.returncode} in {wall_s:.2f} s wall "
          f"(build included); its last line: {run.stdout.strip().splitlines()[-1:] or ['-']}", file=out)
    if etcd is not None and etcd.search_cpu_s > 0:
        print(f"ratio: this search {etcd.search_cpu_s:.2f} CPU-s / porcupine {wall_s:.2f} s = "
              f"{etcd.search_cpu_s / wall_s:.2f}x", file=out)


def main(argv: list[str] | None = None, out=sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.check_histories", description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=Path, default=DEFAULT_HISTORIES, help="the folder with expected.tsv")
    parser.add_argument("--suite", default="", help="only files whose path starts with this (e.g. porcupine/kv)")
    parser.add_argument("--porcupine", type=Path, help="a porcupine checkout, to time it on the same files")
    parser.add_argument("--no-explanations", action="store_true",
                        help="check each history once, without shrinking failures (the search figures only)")
    arguments = parser.parse_args(argv)
    expected = arguments.histories / "expected.tsv"
    if not expected.exists():
        print(f"skipped: no {expected} (the published histories are not on this machine)", file=out)
        return 0
    rows = [line.split("\t") for line in expected.read_text().splitlines()[1:] if line.strip()]
    tallies: dict[str, SuiteTally] = {}
    for name, answer in rows:
        if name.startswith(arguments.suite) and answer in ANSWERS:
            tally = tallies.setdefault(suite_of(name), SuiteTally())
            check_one(arguments.histories / name, name, answer, tally, not arguments.no_explanations)
    for name, tally in sorted(tallies.items()):
        print(tally.line(name), file=out)
        for problem in tally.disagree + tally.unknown:
            print(f"    {problem}", file=out)
    suites = list(tallies.values())
    total = SuiteTally(sum(t.files for t in suites), sum(t.agree for t in suites),
                       [p for t in suites for p in t.disagree], [p for t in suites for p in t.unknown],
                       sum(t.states for t in suites), sum(t.search_cpu_s for t in suites),
                       sum(t.explained_cpu_s for t in suites))
    print(total.line("all"), file=out)
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", file=out)
    compare_with_porcupine(arguments.porcupine, tallies.get("porcupine/jepsen"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
