"""The one benchmark command: ``python -m benchmarks`` runs every benchmark and prints one table.

Each ``benchmarks/bench_*.py`` module runs in a process of its own (they start stand-ins, event loops and
child processes of their own, and must not measure each other), with ``--quick`` passed on for a CI smoke
run, and writes its JSON next to the others in ``benchmarks/results/`` (git-ignored). ``peerbot demo`` is
timed end to end when the command exists. The table then puts the headline figures side by side, each
with what it is compared against: a bare floor measured in the same run (a Bolt app that only
acknowledges, a kopf operator that only creates a Job), or the issue's target. The whole run is also
written as ``benchmarks/results/summary-<time>.json``.

    python -m benchmarks            # about five minutes on a 2-core machine
    python -m benchmarks --quick    # a smoke run for CI: small sizes, under a minute
    python -m benchmarks --only operator dispatcher

Exit status: 0 when every benchmark ran and nothing was lost or duplicated, 1 otherwise (a missed speed
target is reported in the table, not an error: speed depends on the machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

REPOSITORY: Final = pathlib.Path(__file__).resolve().parents[1]
HERE: Final = pathlib.Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
#: The order benchmarks run in (others found as ``bench_*.py`` run after these, alphabetically).
ORDER: Final = ("dispatcher", "operator", "worker", "warm")
#: Generous bounds per benchmark (a hung one must not hang CI); the quick ones are smoke runs.
TIMEOUT_SECONDS: Final = 900.0
QUICK_TIMEOUT_SECONDS: Final = 180.0
#: The offline demo's promise (tests/integration/test_demo.py checks it too).
DEMO_TARGET_SECONDS: Final = 30.0


@dataclass
class Row:
    """One figure of the table: what, how much, and against what."""

    benchmark: str
    measure: str
    value: str
    compared_with: str
    verdict: str = ""  # "ok", "missed", or "" when there is no target


@dataclass
class Outcome:
    """How one benchmark run went."""

    name: str
    command: list[str]
    exit_code: int | None
    seconds: float
    output: str | None  # the JSON file, when the benchmark writes one
    log: str
    rows: list[Row] = field(default_factory=list)
    error: str | None = None


# --- running ---------------------------------------------------------------------------------------------


def discover() -> list[str]:
    """The benchmark modules present, as names (``bench_operator.py`` → ``operator``), in run order."""
    found = sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))
    return [name for name in ORDER if name in found] + [name for name in found if name not in ORDER]


def demo_available() -> bool:
    """Whether ``peerbot demo`` exists in this checkout (it is built by its own issue)."""
    return importlib.util.find_spec("peerbot.demo") is not None


def run_module(name: str, quick: bool, stamp: str, timeout: float, results: pathlib.Path) -> Outcome:
    output = results / f"{name}-{stamp}.json"
    log = results / f"{name}-{stamp}.log"
    command = [sys.executable, "-m", f"benchmarks.bench_{name}", "--output", str(output)]
    if quick:
        command.append("--quick")
    return _run(name, command, output, log, timeout)


def run_demo(stamp: str, timeout: float, results: pathlib.Path) -> Outcome:
    log = results / f"demo-{stamp}.log"
    command = [sys.executable, "-m", "peerbot.cli", "demo", "--quiet"]
    outcome = _run("demo", command, None, log, timeout)
    ok = outcome.exit_code == 0
    outcome.rows.append(
        Row(
            "demo",
            "`peerbot demo`: mention → answer → follow-up, end to end",
            f"{outcome.seconds:.1f} s",
            f"target < {DEMO_TARGET_SECONDS:g} s",
            _verdict(ok and outcome.seconds < DEMO_TARGET_SECONDS),
        )
    )
    return outcome


def _run(
    name: str, command: list[str], output: pathlib.Path | None, log: pathlib.Path, timeout: float
) -> Outcome:
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as sink:
        try:
            done = subprocess.run(
                command,
                cwd=REPOSITORY,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            code: int | None = done.returncode
            error = None if code == 0 else f"exited with {code}; see {log}"
        except subprocess.TimeoutExpired:
            code, error = None, f"did not finish in {timeout:g} s; see {log}"
    seconds = time.monotonic() - started
    outcome = Outcome(
        name=name,
        command=command,
        exit_code=code,
        seconds=round(seconds, 1),
        output=str(output) if output is not None and output.exists() else None,
        log=str(log),
        error=error,
    )
    if outcome.output is not None:
        try:
            document = json.loads(pathlib.Path(outcome.output).read_text())
            summarise = SUMMARISERS.get(name)
            outcome.rows = summarise(document) if summarise is not None else _generic(name, document)
        except (ValueError, KeyError, TypeError, IndexError) as problem:
            outcome.rows = [Row(name, "results", outcome.output, "", "")]
            outcome.error = outcome.error or f"could not read its results ({problem!r})"
    print(
        f"   {name}: {outcome.seconds:.0f} s{'' if error is None else ' — ' + error}",
        file=sys.stderr,
        flush=True,
    )
    return outcome


# --- reading each benchmark's results into rows ----------------------------------------------------------


def _verdict(met: bool) -> str:
    return "ok" if met else "missed"


def _ms(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f} ms"


def _dispatcher(document: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    results = document["results"]
    target = document.get("targets", {}).get("p99_ms_at_200_per_second", 250.0)
    bare = {(r["transport"], r["rate"]): r for r in results if r["app"] == "bare"}
    top_rate = max(r["rate"] for r in results)
    for result in results:
        if result["app"] != "dispatcher":
            continue
        floor = bare.get((result["transport"], result["rate"]))
        where = f"{result['transport']}, {result['rate']} events/s"
        compared = f"bare Bolt {_ms(floor['p99_ms'])}" if floor else "no bare run"
        if floor and floor["p99_ms"]:
            compared += f" (×{result['p99_ms'] / floor['p99_ms']:.1f})"
        verdict = ""
        if result["rate"] == top_rate:
            compared += f"; target < {target:g} ms"
            verdict = _verdict(result["p99_ms"] < target)
        rows.append(
            Row(
                "dispatcher",
                f"Slack ack p50 / p99 ({where})",
                f"{_ms(result['p50_ms'])} / {_ms(result['p99_ms'])}",
                compared,
                verdict,
            )
        )
    lost = sum(r.get("lost") or 0 for r in results)
    duplicated = sum(r.get("duplicated") or 0 for r in results)
    sent = sum(r["sent"] for r in results if r["app"] == "dispatcher")
    rows.append(
        Row(
            "dispatcher",
            f"requests lost / duplicated (of {sent})",
            f"{lost} / {duplicated}",
            "target 0 / 0",
            _verdict(lost == 0 and duplicated == 0),
        )
    )
    return rows


def _operator(document: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    targets = document.get("targets", {})
    per_second = targets.get("conversations_per_second", 100.0)
    p99_target = targets.get("p99_ms", 1000.0)
    bursts = document["bursts"]
    floors = {(b["size"], b["rate"]): b for b in bursts if b["app"] == "bare"}
    for burst in bursts:
        if burst["app"] != "peerbot":
            continue
        floor = floors.get((burst["size"], burst["rate"]))
        if burst["rate"]:
            seconds = burst["size"] // burst["rate"]
            measure = f"Conversation → Job p50 / p99, {burst['rate']} new a second for {seconds} s"
            compared = f"bare kopf p99 {_ms(floor['p99_ms'])}" if floor else "no bare run"
            compared += f"; target p99 < {p99_target:g} ms"
            rows.append(
                Row(
                    "operator",
                    measure,
                    f"{_ms(burst['p50_ms'])} / {_ms(burst['p99_ms'])}",
                    compared,
                    _verdict(burst["p99_ms"] < p99_target),
                )
            )
        else:
            measure = f"{burst['size']} Conversations at once: every Job in"
            value = f"{burst['all_jobs_seconds']:.2f} s = {burst['per_second']:.0f}/s"
            value += f" (p99 {_ms(burst['p99_ms'])})"
            compared = (
                f"bare kopf {floor['per_second']:.0f}/s, p99 {_ms(floor['p99_ms'])}"
                if floor
                else "no bare run"
            )
            compared += f"; target ≥ {per_second:g}/s"
            rows.append(
                Row("operator", measure, value, compared, _verdict(burst["per_second"] >= per_second))
            )
        if burst["jobs"] < burst["size"] or burst["duplicates"]:
            rows.append(
                Row(
                    "operator",
                    f"Jobs missing / duplicated ({burst['size']})",
                    f"{burst['size'] - burst['jobs']} / {burst['duplicates']}",
                    "target 0 / 0",
                    "missed",
                )
            )
    memory = document.get("memory") or []
    if memory:
        slope = document.get("bytes_per_finished_conversation")
        limit = targets.get("bytes_per_finished_conversation", 4096)
        points = ", ".join(f"{p['finished']}: {p['traced_kb']:.0f} KB" for p in memory)
        if slope is None or (isinstance(slope, float) and math.isnan(slope)):
            rows.append(
                Row("operator", "memory held by finished Conversations", points, "slope needs a full run")
            )
        else:
            rows.append(
                Row(
                    "operator",
                    "memory held per finished Conversation",
                    f"{slope:.0f} B ({points})",
                    f"target < {limit} B each (flat)",
                    _verdict(slope < limit),
                )
            )
    return rows


def _worker(document: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    first = document.get("first_edit") or {}
    if "median_s" in first:
        rows.append(
            Row(
                "worker",
                "start → first Slack edit (median / max)",
                f"{first['median_s']:.2f} / {first.get('max_s', math.nan):.2f} s",
                "target < 1.5 s",
                _verdict(bool(first.get("met", first["median_s"] < 1.5))),
            )
        )
    for restore in document.get("restore") or []:
        tokens = restore.get("tokens", 0)
        target = "target < 200 ms" if tokens == 100_000 else "grows with the session"
        verdict = _verdict(restore["median_ms"] < 200.0) if tokens == 100_000 else ""
        rows.append(
            Row(
                "session store",
                f"restore a {tokens // 1000}k-token session (median)",
                _ms(restore["median_ms"]),
                target,
                verdict,
            )
        )
    growth = document.get("bytes_per_checkpoint") or []
    step = (document.get("restore") or [{}])[0].get("step_bytes")
    for point in growth:
        rows.append(
            Row(
                "session store",
                f"bytes written per checkpoint at {point.get('tokens', 0) // 1000}k tokens (mean)",
                f"{point.get('mean_bytes_per_checkpoint')} B",
                f"one step encoded: {step} B (proportional to the step, not the session)"
                if step
                else "the step size",
            )
        )
    calls = document.get("slack_calls") or {}
    if calls:
        steps = calls.get("model_steps", 0)
        tools = calls.get("tool_calls", 0)
        rows.append(
            Row(
                "worker",
                f"Slack calls in a turn of {steps} model steps, {tools} tools",
                str(calls.get("slack_calls")),
                f"budget ≤ steps + tools + 12 = {steps + tools + 12}",
                _verdict(bool(calls.get("within_budget"))),
            )
        )
        rows.append(
            Row(
                "worker",
                "Slack 429 answers in that turn",
                str(calls.get("rate_limited")),
                "target 0",
                _verdict(calls.get("rate_limited") == 0),
            )
        )
    return rows


def _warm(document: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for point in document.get("first_progress") or []:
        rows.append(
            Row(
                "warm pool",
                f"mention → first progress with the pool, pods taking {point['pod_start_s']:g} s to start",
                f"{point['warm_p50_s'] * 1000:.0f} ms (p50)",
                f"without the pool {point['cold_p50_s']:.1f} s (÷{point.get('ratio_p50', math.nan):.0f}); "
                "target < 1 s",
                _verdict(bool(point.get("met", point["warm_p50_s"] < 1.0))),
            )
        )
    for point in document.get("claim_latency") or []:
        rows.append(
            Row(
                "warm pool",
                f"claim an idle worker, {point['concurrent']} turns at once (p50 / p99)",
                f"{_ms(point['p50_ms'])} / {_ms(point['p99_ms'])}",
                "target p50 < 100 ms, p99 < 400 ms",
                _verdict(bool(point.get("met", point["p50_ms"] < 100 and point["p99_ms"] < 400))),
            )
        )
    return rows


def _generic(name: str, document: dict[str, Any]) -> list[Row]:
    """A benchmark this table does not know yet: that it ran, and whether it met its own targets."""
    missed = document.get("missed")
    verdict = "" if missed is None else _verdict(not missed)
    where = f"benchmarks/results/{name}-….json"
    return [Row(name, f"its figures are in {where}", "ran", "its own targets", verdict)]


SUMMARISERS: Final[dict[str, Callable[[dict[str, Any]], list[Row]]]] = {
    "dispatcher": _dispatcher,
    "operator": _operator,
    "worker": _worker,
    "warm": _warm,
}


# --- the table -------------------------------------------------------------------------------------------


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [row for outcome in outcomes for row in outcome.rows]
    for outcome in outcomes:
        if outcome.error:
            rows.append(Row(outcome.name, "did not complete", outcome.error, "", "failed"))
    headers = ("benchmark", "measure", "value", "compared with", "")
    cells = [headers] + [(r.benchmark, r.measure, r.value, r.compared_with, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(outcomes: Sequence[Outcome]) -> str:
    """The same table in Markdown, for ``docs/performance.md``."""
    lines = ["| benchmark | measure | value | compared with | |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        for r in outcome.rows:
            lines.append(f"| {r.benchmark} | {r.measure} | {r.value} | {r.compared_with} | {r.verdict} |")
        if outcome.error:
            lines.append(f"| {outcome.name} | did not complete | {outcome.error} | | failed |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes of every benchmark (a CI smoke run)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these (dispatcher, operator, worker, demo)"
    )
    parser.add_argument("--no-demo", action="store_true", help="do not time `peerbot demo`")
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        default=RESULTS,
        help="where the JSON and logs go (default benchmarks/results)",
    )
    args = parser.parse_args(argv)

    names = discover()
    wanted = set(args.only) if args.only else None
    unknown = (wanted or set()) - {*names, "demo"}
    if unknown:
        parser.error(
            f"no such benchmark: {', '.join(sorted(unknown))} (there are: {', '.join([*names, 'demo'])})"
        )
    results: pathlib.Path = args.results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    timeout = QUICK_TIMEOUT_SECONDS if args.quick else TIMEOUT_SECONDS
    started = time.monotonic()
    outcomes: list[Outcome] = []
    for name in names:
        if wanted is None or name in wanted:
            outcomes.append(run_module(name, args.quick, stamp, timeout, results))
    if not args.no_demo and (wanted is None or "demo" in wanted):
        if demo_available():
            outcomes.append(run_demo(stamp, timeout, results))
        else:
            print("== demo: `peerbot demo` is not in this checkout; skipped", file=sys.stderr)

    print()
    print(table(outcomes))
    if args.markdown:
        print()
        print(markdown(outcomes))
    summary = results / f"summary-{stamp}.json"
    document = {
        "at": datetime.now(UTC).isoformat(),
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "benchmarks": [asdict(outcome) for outcome in outcomes],
    }
    summary.write_text(json.dumps(document, indent=2) + "\n")
    latest = results / "summary-latest.json"
    shutil.copyfile(summary, latest)
    print(f"\nresults: {summary} (and each benchmark's JSON and log beside it)")
    failed = [o for o in outcomes if o.error or o.exit_code != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
