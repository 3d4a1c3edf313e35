"""Packaging: every package folder is listed, so a normal (non-editable) install and the images get it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
ROOTS = {
    "peerbot": "peerbot",
    "dispatcher": "peerbot.dispatcher",
    "operator": "peerbot.operator",
    "worker": "peerbot.worker",
}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            if folder == "peerbot" and relative.parts[:1] in (("dispatcher",), ("operator",), ("worker",)):
                continue
            found.add(".".join([package, *relative.parts]))
    assert found == listed


def test_the_standard_operator_module_still_works():
    import operator

    assert operator.add(1, 2) == 3
    import peerbot.operator

    assert peerbot.operator.__name__ == "peerbot.operator"
