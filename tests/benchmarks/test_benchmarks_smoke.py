"""``python -m benchmarks --quick``: every benchmark runs and produces its figures.

This is the CI smoke run of the one benchmark command: small sizes of every benchmark (dispatcher,
operator, worker and session store, any other ``benchmarks/bench_*.py``, and ``peerbot demo`` end to end).
It checks that each ran, wrote its JSON, and gave every row of the table a value and what it is compared
with. It does not check how fast anything was: that depends on the machine, and is what the full run and
``docs/performance.md`` are for.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any, Final

REPOSITORY: Final = pathlib.Path(__file__).resolve().parents[2]
#: The quick run takes about a minute on a 2-core machine; this bounds a hung benchmark.
TIMEOUT_SECONDS: Final = 240.0
#: Benchmarks that exist from the start; others (``bench_*.py``) are checked when present.
ALWAYS: Final = ("dispatcher", "operator")


def run_quick(results: pathlib.Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results", str(results)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    summary = results / "summary-latest.json"
    assert summary.exists(), f"no summary written\n{done.stdout}\n{done.stderr}"
    document: dict[str, Any] = json.loads(summary.read_text())
    return done, document


def test_quick_run_of_every_benchmark_produces_figures(tmp_path: pathlib.Path) -> None:
    done, summary = run_quick(tmp_path)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, output
    assert summary["quick"] is True

    ran = {benchmark["name"]: benchmark for benchmark in summary["benchmarks"]}
    expected = {path.stem.removeprefix("bench_") for path in (REPOSITORY / "benchmarks").glob("bench_*.py")}
    assert set(ALWAYS) <= expected
    assert expected <= set(ran), f"not run: {expected - set(ran)}"
    for name, benchmark in ran.items():
        assert benchmark["error"] is None, f"{name}: {benchmark['error']}"
        assert benchmark["rows"], f"{name} produced no figures"
        if name != "demo":
            assert benchmark["output"], f"{name} wrote no JSON"
            assert pathlib.Path(benchmark["output"]).exists(), name
        for row in benchmark["rows"]:
            measure = row["measure"]
            assert row["value"], f"{name}: no value for {measure}"
            assert "n/a" not in row["value"], f"{name}: no value for {measure}"
            assert row["compared_with"], f"{name}: {measure} says nothing about what it is compared with"

    # The one table is printed, with a row per figure.
    table = done.stdout
    assert "compared with" in table
    for name in ran:
        assert f"\n{name}" in table or table.startswith(name), f"{name} is not in the table"
