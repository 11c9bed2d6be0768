"""The peers' own suites, stock and with our drop-ins: jupyter_client's and jupyter_server's
kernel, client, restarter and session tests, and nbclient's, from the source distributions of
the versions installed here, run once as they are and once with HBChannel,
HeartbeatIOLoopKernelManager and HeartbeatKernelManager in place of their classes
(benchmarks/peer_dropins.py does the swap).
Prints both counts side by side, the tests whose outcome differs, and how often our classes
were used (the proof that the drop-ins ran). Exits 1 when a test that passes stock does not
pass with the drop-ins, or a run did not finish.

    python -m benchmarks.peer_suites                    # every suite, about 20 minutes
    python -m benchmarks.peer_suites --suites jupyter_client --files tests/test_client.py

Needs pip and the package registry: it downloads the sdists, and installs the suites' test
requirements that are missing (their ``test`` extra, less linters and coverage) into a cache
directory of its own with ``pip install --target``, which only these runs put on their path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip carries
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
except ModuleNotFoundError:  # pragma: no cover - the copy pip carries
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

# What each suite runs: its kernel manager, client, restarter and session tests.
SUITES: dict[str, list[str]] = {
    "jupyter_client": [
        # test_client.py first: test_kernelmanager.py's forked kernels hung after it (issue 17).
        "tests/test_client.py",
        "tests/test_kernelmanager.py",
        "tests/test_restarter.py",
        "tests/test_multikernelmanager.py",
        "tests/test_session.py",
    ],
    "jupyter_server": [
        "tests/services/kernels",
        "tests/services/sessions",
    ],
    # A headless runner: its notebooks executed through jupyter_client's AsyncKernelManager
    # (ours, swapped in), its kernel deaths, timeouts and interrupts.
    "nbclient": [
        "tests/test_client.py",
        "tests/test_cli.py",
    ],
}
# Test requirements the runs do without: linters, type checkers, coverage.
NOT_NEEDED = {"pre-commit", "mypy", "coverage", "pytest-cov"}
OUTCOMES = ("passed", "failed", "error", "skipped", "timeout", "unfinished")


@dataclass
class Run:
    """One run of one suite: each test's outcome, and what the drop-ins plugin recorded."""

    outcomes: dict[str, str] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    swapped: dict[str, str] = field(default_factory=dict)
    heartbeat: str = ""
    seconds: float = 0.0
    returncode: int | None = None  # None: killed at the overall timeout
    tail: str = ""

    def counts(self) -> Counter[str]:
        return Counter(self.outcomes.values())


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    version = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return base / "kernel-heartbeat" / "peer-suites" / version


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True)


def fetch_sdist(name: str, version: str, into: Path) -> Path:
    """Download and unpack ``name==version``'s source distribution; return its directory."""
    pip("download", "--no-deps", "--no-binary", ":all:", "--dest", str(into), f"{name}=={version}")
    archives = [p for p in into.iterdir() if p.name.endswith(".tar.gz")]
    wanted = [p for p in archives if p.name.replace("-", "_").startswith(f"{name}_{version}")]
    if len(wanted) != 1:
        raise SystemExit(f"no single sdist of {name} {version} in {into}: {archives}")
    with tarfile.open(wanted[0]) as tar:
        tar.extractall(into, filter="data")
    return into / wanted[0].name.removesuffix(".tar.gz")


def test_requirements(source: Path) -> list[Requirement]:
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project.get("optional-dependencies", {}).get("test", [])]
    return [
        r
        for r in reqs
        if r.name.lower() not in NOT_NEEDED and (r.marker is None or r.marker.evaluate())
    ]


def missing(reqs: list[Requirement], path: list[str]) -> list[Requirement]:
    """The requirements (and their extras' requirements) not satisfied on ``path``."""
    absent = []
    for req in reqs:
        found = list(importlib.metadata.distributions(name=req.name, path=path))
        if not found or not req.specifier.contains(found[0].version, prereleases=True):
            absent.append(req)
            continue
        for extra in req.extras:
            for sub in found[0].requires or []:
                subreq = Requirement(sub)
                if subreq.marker is not None and subreq.marker.evaluate({"extra": extra}):
                    subreq.marker = None
                    absent.extend(missing([subreq], path))
    return absent


def install_test_requirements(sources: dict[str, Path], deps: Path) -> None:
    path = [str(deps), *sys.path]
    wanted = [req for source in sources.values() for req in test_requirements(source)]
    absent = missing(wanted, path)
    if absent:
        names = sorted({str(r) for r in absent})
        print(f"installing the suites' test requirements into {deps}: {' '.join(names)}")
        pip("install", "--no-deps", "--target", str(deps), "--upgrade", *names)
    still = missing(wanted, [str(deps), *sys.path])
    if still:
        print(f"still missing (their tests that need them will fail): {still}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (kernels run in sessions of their own, not its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_suite(source: Path, files: list[str], dropins: bool, args: argparse.Namespace) -> Run:
    fd, record = tempfile.mkstemp(prefix="peer-suite-", suffix=".jsonl")
    os.close(fd)
    env = dict(os.environ)
    # cwd (their tests) first, as python -m pytest puts it; then our drop-ins, then the deps.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(args.deps)])
    env["HEARTBEAT_PEER_RECORD"] = record
    env["HEARTBEAT_PEER_DROPINS"] = "1" if dropins else "0"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "benchmarks.peer_dropins",
        f"--timeout={args.timeout}",
        # signal: a test past its time fails and the run goes on (thread: the run ends there).
        "--timeout-method=signal",
        "--color=no",
        *files,
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=source,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run = Run()
    try:
        out, _ = proc.communicate(timeout=args.budget)
        run.returncode = proc.returncode
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate()
    run.seconds = time.monotonic() - start
    run.tail = "\n".join(out.splitlines()[-40:])
    started: list[str] = []
    phases: dict[str, dict[str, str]] = {}
    for line in Path(record).read_text().splitlines():
        item = json.loads(line)
        if "start" in item:
            started.append(item["start"])
        elif "test" in item:
            phases.setdefault(item["test"], {})[item["when"]] = item["outcome"]
        elif "used" in item:
            run.used = item["used"]
        elif "dropins" in item:
            run.swapped, run.heartbeat = item["dropins"], item["heartbeat"]
    os.unlink(record)
    for nodeid in dict.fromkeys(started):
        phase = phases.get(nodeid, {})
        bad = [o for o in phase.values() if o in ("timeout", "error", "failed")]
        if "timeout" in bad:
            run.outcomes[nodeid] = "timeout"
        elif phase.get("setup") in ("error", "failed") or phase.get("teardown") in (
            "error",
            "failed",
        ):
            run.outcomes[nodeid] = "error"
        elif "call" in phase:
            run.outcomes[nodeid] = phase["call"]
        elif phase.get("setup") == "skipped":
            run.outcomes[nodeid] = "skipped"
        else:
            run.outcomes[nodeid] = "unfinished"  # started, never ended: the run was killed
    return run


def same_test(nodeid: str) -> str:
    """A drop-in run's test id as the stock run names it: a test parametrized by class names the
    class, ours in the drop-in run."""
    base, bracket, params = nodeid.partition("[")
    params = params.replace("HeartbeatIOLoopKernelManager", "KernelManager")
    return base + bracket + params.replace("HeartbeatKernelManager", "AsyncKernelManager")


def table(name: str, version: str, files: list[str], stock: Run, ours: Run) -> list[str]:
    lines = [f"{name} {version}: {' '.join(files)}"]
    heads = ["passed", "failed", "errors", "skipped", "timeouts", "unfinished", "total", "time"]
    lines.append(f"{'':10}" + "".join(f"{h:>11}" for h in heads))
    for label, run in (("stock", stock), ("drop-ins", ours)):
        c = run.counts()
        cells = [c[o] for o in OUTCOMES] + [len(run.outcomes)]
        ended = f"{run.seconds:.0f} s" + ("" if run.returncode is not None else " KILLED")
        lines.append(f"{label:10}" + "".join(f"{n:>11}" for n in cells) + f"{ended:>11}")
    differ = [
        f"  {nodeid}: {stock.outcomes.get(nodeid, '-')} stock, {outcome} with the drop-ins"
        for nodeid, outcome in ours.outcomes.items()
        if stock.outcomes and ours.outcomes and stock.outcomes.get(nodeid) != outcome
    ]
    lines.append("outcomes that differ:" + ("" if differ else " none"))
    lines.extend(differ)
    both = [
        f"  {nodeid}: {outcome}"
        for nodeid, outcome in ours.outcomes.items()
        if stock.outcomes.get(nodeid) == outcome and outcome not in ("passed", "skipped")
    ]
    lines.append("failing both ways (not ours):" + ("" if both else " none"))
    lines.extend(both)
    used = ", ".join(f"{k} {v}" for k, v in sorted(ours.used.items())) or "NONE"
    lines.append(f"drop-ins used: {used}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_suites")
    parser.add_argument("--suites", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--files", nargs="+", help="these test files instead (one suite only)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per test")
    parser.add_argument("--budget", type=int, default=600, help="seconds per run, at most")
    parser.add_argument("--deps", type=Path, default=cache_dir() / "deps")
    parser.add_argument("--only", choices=("stock", "drop-ins"), help="one of the two runs")
    args = parser.parse_args()
    if args.files and len(args.suites) != 1:
        parser.error("--files needs exactly one of --suites")
    args.deps.mkdir(parents=True, exist_ok=True)
    versions = {name: importlib.metadata.version(name) for name in args.suites}
    report: list[str] = []
    worse = False
    with tempfile.TemporaryDirectory(prefix="peer-suites-") as tmp:
        sources = {n: fetch_sdist(n, v, Path(tmp) / n) for n, v in versions.items()}
        install_test_requirements(sources, args.deps)
        for name, source in sources.items():
            files = args.files or SUITES[name]
            runs = {}
            for label, dropins in (("stock", False), ("drop-ins", True)):
                if args.only and args.only != label:
                    runs[label] = Run(returncode=0)  # not run: nothing to count or compare
                    continue
                print(f"running {name} {versions[name]} {label}: {' '.join(files)}", flush=True)
                runs[label] = run_suite(source, files, dropins, args)
                outcomes = runs[label].outcomes
                runs[label].outcomes = {same_test(t): o for t, o in outcomes.items()}
                if runs[label].returncode is None or not runs[label].outcomes:
                    print(runs[label].tail)
            stock, ours = runs["stock"], runs["drop-ins"]
            if ours.outcomes:
                here = Path(ours.heartbeat).resolve().parent.parent
                if here != ROOT or not ours.used:
                    print(f"the drop-ins did not run (heartbeat from {ours.heartbeat})")
                    worse = True
            lines = table(name, versions[name], files, stock, ours)
            print("\n".join(lines), flush=True)
            report.extend([*lines, ""])
            passed_stock = {t for t, o in stock.outcomes.items() if o == "passed"}
            if not args.only and any(ours.outcomes.get(t) != "passed" for t in passed_stock):
                worse = True
            if ours.returncode is None or stock.returncode is None:
                worse = True
    py = ".".join(map(str, sys.version_info[:3]))
    print(f"\nPython {py}, {time.strftime('%Y-%m-%d')}; per test {args.timeout} s")
    print("\n".join(report))
    return 1 if worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
