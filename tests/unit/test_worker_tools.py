"""The worker's tools: bash with a timeout, an output cap and process-group kill; the editor confined to the
workspace (symlinks included); both redact secrets before Claude sees anything."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from peerbot.worker.redaction import Redactor
from peerbot.worker.tools import ToolBox
from peerbot.worker.tools.bash import BashTool
from peerbot.worker.tools.editor import TextEditor

SECRET = "ghp_" + "a" * 36


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    repo = tmp_path / "workspace" / "repo"
    repo.mkdir(parents=True)
    (repo / "app.py").write_text("def greet():\n    return 'hello'\n\n\nprint(greet())\n")
    return tmp_path / "workspace"


def make_bash(workspace: Path, *, timeout: float = 10, limit: int = 2000) -> BashTool:
    env = {"PATH": os.environ["PATH"], "HOME": str(workspace)}
    return BashTool(
        start_dir=workspace / "repo",
        workspace=workspace,
        env=env,
        timeout_seconds=timeout,
        output_limit=limit,
        redact=Redactor([SECRET]),
    )


async def test_bash_runs_in_the_repository_and_keeps_the_folder(workspace: Path) -> None:
    bash = make_bash(workspace)
    try:
        first = await bash.run("pwd && ls")
        assert first.text.splitlines()[0] == str(workspace / "repo")
        assert "app.py" in first.text
        await bash.run("mkdir -p sub && cd sub")
        assert (await bash.run("pwd")).text == str(workspace / "repo" / "sub")
        failing = await bash.run("echo out; echo err >&2; exit 3")
        assert "out" in failing.text
        assert "err" in failing.text
        assert "[exit code 3]" in failing.text
        assert failing.exit_code == 3
        assert "restarted" in await bash.restart()
        assert (await bash.run("pwd")).text == str(workspace / "repo")
    finally:
        await bash.close()


async def test_a_hanging_command_is_killed_with_its_whole_process_group(workspace: Path) -> None:
    bash = make_bash(workspace, timeout=0.5)
    marker = workspace / "child.pid"
    try:
        started = time.monotonic()
        result = await bash.run(f"sleep 60 & echo $! > {marker}; sleep 60")
        assert time.monotonic() - started < 5
        assert result.timed_out
        assert result.is_error
        assert "stopped after" in result.text
        child = int(marker.read_text())
        # The background child was in the same process group: it is gone too (or a zombie being reaped).
        for _ in range(100):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if process_state(child) in ("Z", "X"):
                break
            await asyncio.sleep(0.02)  # a bounded wait for the kernel to finish the kill, failing below
        else:
            pytest.fail("the background child survived the timeout")
    finally:
        await bash.close()


async def test_megabytes_of_output_are_capped_with_a_note(workspace: Path) -> None:
    bash = make_bash(workspace, limit=2000)
    try:
        result = await bash.run("echo FIRST; yes 0123456789 | head -c 5000000; echo; echo LAST")
        assert result.truncated
        assert len(result.text) < 3000
        assert result.text.startswith("FIRST")
        assert result.text.rstrip().endswith("LAST")
        assert "bytes of output cut" in result.text
    finally:
        await bash.close()


async def test_binary_output_is_described_not_shown(workspace: Path) -> None:
    bash = make_bash(workspace)
    try:
        result = await bash.run("head -c 3000 /dev/urandom; printf '\\0\\0'")
        assert "binary output" in result.text
    finally:
        await bash.close()


async def test_secrets_printed_by_a_command_are_redacted(workspace: Path) -> None:
    bash = make_bash(workspace)
    try:
        result = await bash.run(f"echo token={SECRET}; echo xoxb-123-456-abcdef")
        assert SECRET not in result.text
        assert "xoxb-123" not in result.text
        assert result.text.count("[REDACTED]") == 2
    finally:
        await bash.close()


async def test_a_background_process_holding_the_output_does_not_hang_the_tool(workspace: Path) -> None:
    bash = make_bash(workspace)
    try:
        started = time.monotonic()
        result = await bash.run("(sleep 30; echo late) & echo started")
        assert time.monotonic() - started < 5
        assert "started" in result.text
        assert "still running" in result.text
    finally:
        await bash.close()


def process_state(pid: int) -> str:
    """The state letter of a process in /proc (``Z`` zombie), ``X`` when it is gone."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.read_text().split()[2] if stat.exists() else "X"


def make_editor(workspace: Path) -> TextEditor:
    return TextEditor(
        workspace=workspace, base=workspace / "repo", output_limit=5000, redact=Redactor([SECRET])
    )


def test_editor_views_creates_replaces_and_inserts(workspace: Path) -> None:
    editor = make_editor(workspace)
    view = editor.run({"command": "view", "path": "app.py"})
    assert not view.is_error
    assert "     1\tdef greet():" in view.text
    ranged = editor.run({"command": "view", "path": str(workspace / "repo" / "app.py"), "view_range": [2, 2]})
    assert ranged.text == "     2\t    return 'hello'"
    listing = editor.run({"command": "view", "path": str(workspace)})
    assert "repo/app.py" in listing.text

    edit = editor.run({"command": "str_replace", "path": "app.py", "old_str": "'hello'", "new_str": "'hi'"})
    assert edit.changed
    assert "return 'hi'" in edit.text
    assert (workspace / "repo" / "app.py").read_text().startswith("def greet():\n    return 'hi'\n")

    inserted = editor.run(
        {"command": "insert", "path": "app.py", "insert_line": 0, "insert_text": "# greeting"}
    )
    assert inserted.changed
    assert (workspace / "repo" / "app.py").read_text().startswith("# greeting\ndef greet():")

    created = editor.run({"command": "create", "path": "pkg/new.py", "file_text": "x = 1\n"})
    assert created.changed
    assert (workspace / "repo" / "pkg" / "new.py").read_text() == "x = 1\n"


def test_editor_errors_tell_claude_what_to_do(workspace: Path) -> None:
    editor = make_editor(workspace)
    (workspace / "repo" / "twice.txt").write_text("a\na\n")
    missing = editor.run({"command": "str_replace", "path": "app.py", "old_str": "nope", "new_str": "x"})
    assert missing.is_error
    assert "does not appear verbatim" in missing.text
    twice = editor.run({"command": "str_replace", "path": "twice.txt", "old_str": "a", "new_str": "b"})
    assert twice.is_error
    assert "occurs 2 times" in twice.text
    assert "lines 1, 2" in twice.text
    assert editor.run({"command": "view", "path": "nowhere.py"}).is_error
    assert editor.run({"command": "insert", "path": "app.py", "insert_line": 99, "insert_text": "x"}).is_error
    assert editor.run({"command": "undo_edit", "path": "app.py"}).is_error
    (workspace / "repo" / "blob.bin").write_bytes(b"\x00\x01\x02")
    binary = editor.run({"command": "view", "path": "blob.bin"})
    assert binary.is_error
    assert "binary" in binary.text


def test_editor_refuses_paths_outside_the_workspace(workspace: Path, tmp_path: Path) -> None:
    editor = make_editor(workspace)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    for path in ("../../outside.txt", str(outside), "/etc/passwd"):
        result = editor.run({"command": "view", "path": path})
        assert result.is_error
        assert "outside the workspace" in result.text
    assert editor.run({"command": "create", "path": "../../escape.txt", "file_text": "x"}).is_error
    assert not (tmp_path / "escape.txt").exists()


def test_editor_refuses_symlinks_that_leave_the_workspace(workspace: Path, tmp_path: Path) -> None:
    editor = make_editor(workspace)
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "target.txt").write_text("not yours")
    (workspace / "repo" / "link.txt").symlink_to(outside_dir / "target.txt")
    (workspace / "repo" / "linkdir").symlink_to(outside_dir)
    assert editor.run({"command": "view", "path": "link.txt"}).is_error
    write = editor.run({"command": "create", "path": "linkdir/new.txt", "file_text": "x"})
    assert write.is_error
    assert "outside the workspace" in write.text
    assert not (outside_dir / "new.txt").exists()
    replace = editor.run({"command": "str_replace", "path": "link.txt", "old_str": "not", "new_str": "now"})
    assert replace.is_error
    assert (outside_dir / "target.txt").read_text() == "not yours"
    # A link that stays inside is fine.
    (workspace / "repo" / "inside.py").symlink_to(workspace / "repo" / "app.py")
    assert not editor.run({"command": "view", "path": "inside.py"}).is_error


def test_editor_redacts_secrets_in_files_it_shows(workspace: Path) -> None:
    (workspace / "repo" / ".env").write_text(f"GITHUB_TOKEN={SECRET}\n")
    view = make_editor(workspace).run({"command": "view", "path": ".env"})
    assert SECRET not in view.text
    assert "[REDACTED]" in view.text


async def test_toolbox_definitions_dispatch_and_descriptions(workspace: Path) -> None:
    box = ToolBox(
        workspace=workspace,
        repo_dir=workspace / "repo",
        env={"PATH": os.environ["PATH"]},
        timeout_seconds=5,
        output_limit=4000,
        redact=Redactor(),
    )
    try:
        assert [tool["type"] for tool in box.definitions()] == ["bash_20250124", "text_editor_20250728"]
        assert [tool["name"] for tool in box.definitions()] == ["bash", "str_replace_based_edit_tool"]
        assert ToolBox.describe("bash", {"command": "pytest -q"}) == "running `pytest -q`"
        assert ToolBox.describe(
            "str_replace_based_edit_tool", {"command": "str_replace", "path": "/w/app.py"}
        ) == ("editing app.py")
        ran = await box.run({"id": "toolu_1", "name": "bash", "input": {"command": "echo hi"}})
        assert ran.block == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hi"}
        unknown = await box.run({"id": "toolu_2", "name": "web_search", "input": {}})
        assert unknown.block["is_error"] is True
        silent = await box.run({"id": "toolu_3", "name": "bash", "input": {"command": "true"}})
        assert silent.block["content"] == "(no output)"
        short = await box.run(
            {"id": "toolu_4", "name": "bash", "input": {"command": "sleep 30"}}, time_left=0.3
        )
        assert short.stopped_by_deadline
        assert short.block["is_error"] is True
    finally:
        await box.close()
