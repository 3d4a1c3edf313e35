"""Fixtures of the fault suite: the ledger of what was tried, and the real operator, restartable.

- ``ledger``: each test records the faults it tried (``ledger.record(fault, tried=…, survived=…, lost=…)``);
  at the end of the run the table of ``docs/reliability.md`` is printed, with the command that reproduces
  each row, and written to ``benchmarks/results/reliability-latest.json`` (git-ignored).
- ``operator``: starts the real kopf operator (``peerbot.operator``) against the Kubernetes and Slack
  stand-ins, as many times as a test needs (a restart is a stop and a new start, with new clients).
- ``faults``: :class:`~tests.faults.chaos.ApiFaults` installed on the Kubernetes stand-in.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

import kopf
import pytest
from kopf.testing import KopfRunner

from peerbot.operator.handlers import REGISTRY
from peerbot.testing.kubernetes import KubernetesStandIn
from peerbot.testing.slack import SlackStandIn
from tests.faults.chaos import ApiFaults

NAMESPACE: Final = "default"
#: kopf starts in well under a second against the stand-in; this bounds a stuck start or stop.
OPERATOR_TIMEOUT_SECONDS: Final = 15.0
RESULTS: Final = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"
_LEDGER: Final = pytest.StashKey["Ledger"]()


@dataclass
class Row:
    fault: str
    tried: int
    survived: int
    lost: int
    test: str

    @property
    def command(self) -> str:
        return f"pytest {self.test}"


class Ledger:
    """Every fault and bad input tried in this run, by test."""

    def __init__(self) -> None:
        self.rows: list[Row] = []


class Recorder:
    """What one test writes into the ledger."""

    def __init__(self, ledger: Ledger, test: str) -> None:
        self._ledger = ledger
        self._test = test

    def record(self, fault: str, *, tried: int, survived: int, lost: int) -> None:
        self._ledger.rows.append(Row(fault, tried, survived, lost, self._test))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LEDGER] = Ledger()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Recorder:
    return Recorder(request.config.stash[_LEDGER], request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    ledger = config.stash.get(_LEDGER, None)
    if ledger is None or not ledger.rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("faults and bad input tried (docs/reliability.md)")
    write("| fault or bad input | tried | survived | lost | reproduce |")
    write("|---|---|---|---|---|")
    for row in ledger.rows:
        write(f"| {row.fault} | {row.tried} | {row.survived} | {row.lost} | `{row.command}` |")
    with contextlib.suppress(OSError):
        RESULTS.mkdir(parents=True, exist_ok=True)
        document = [asdict(row) | {"command": row.command} for row in ledger.rows]
        (RESULTS / "reliability-latest.json").write_text(json.dumps(document, indent=2) + "\n")


# --- the operator ------------------------------------------------------------------------------------------


@pytest.fixture
def operator_env(
    monkeypatch: pytest.MonkeyPatch,
    slack_standin: SlackStandIn,
    kubernetes_standin: KubernetesStandIn,
    kubeconfig: Any,
) -> None:
    """The operator's settings, pointed at the stand-ins; the workers' ServiceAccount the chart creates."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack_standin.bot_token)
    monkeypatch.setenv("SLACK_API_URL", slack_standin.api_url)
    monkeypatch.setenv("WORKER_IMAGE", "registry.test/peerbot-worker:test")
    monkeypatch.setenv("PEERBOT_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("OPERATOR_PORT", "0")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubernetes_standin.create(
        "serviceaccounts",
        {"metadata": {"name": "peerbot-worker"}, "automountServiceAccountToken": False},
        NAMESPACE,
    )


Operator = Callable[[], contextlib.AbstractContextManager[KopfRunner]]


@pytest.fixture
def operator(operator_env: None, kubernetes_standin: KubernetesStandIn) -> Operator:
    """``with operator(): ...`` runs the real operator until the block ends (call it again to restart)."""

    @contextlib.contextmanager
    def run() -> Iterator[KopfRunner]:
        settings = kopf.OperatorSettings()
        # Operators here are stopped and started often: no idle per-object workers kept around.
        settings.queueing.idle_timeout = 0.2
        settings.queueing.exit_timeout = 0.2
        args = ["run", "--standalone", "--namespace", NAMESPACE, "-m", "peerbot.operator"]
        with KopfRunner(
            args, registry=REGISTRY, settings=settings, timeout=OPERATOR_TIMEOUT_SECONDS
        ) as runner:
            for resource in ("conversations", "jobs", "pods"):
                kubernetes_standin.wait_for_watch(resource, NAMESPACE, timeout=OPERATOR_TIMEOUT_SECONDS)
            yield runner
        if runner.exception is not None:
            raise AssertionError(f"the operator failed: {runner.exception!r}\n{runner.output}")

    return run


@pytest.fixture
def faults(kubernetes_standin: KubernetesStandIn) -> ApiFaults:
    return ApiFaults(kubernetes_standin).install()
