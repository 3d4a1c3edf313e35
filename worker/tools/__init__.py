"""The tools Claude uses in the workspace: Anthropic's bash tool and text editor tool, and their dispatcher.

:class:`ToolBox` holds both, gives the tool definitions for the Messages API, runs one ``tool_use`` block
and returns its ``tool_result`` block, and describes what a call is doing in words for the status
message ("running `pytest -q`", "editing app.py").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from peerbot.worker.tools.bash import TOOL_NAME as BASH_NAME
from peerbot.worker.tools.bash import TOOL_TYPE as BASH_TYPE
from peerbot.worker.tools.bash import BashTool
from peerbot.worker.tools.editor import TOOL_NAME as EDITOR_NAME
from peerbot.worker.tools.editor import TOOL_TYPE as EDITOR_TYPE
from peerbot.worker.tools.editor import TextEditor

__all__ = ["BASH_NAME", "EDITOR_NAME", "BashTool", "TextEditor", "ToolBox", "ToolOutcome"]

#: A command shown in the status message is cut to this many characters.
DESCRIBE_LIMIT: Final = 60


@dataclass(frozen=True)
class ToolOutcome:
    """One tool call's result: the ``tool_result`` block, whether it may have changed files, and if it hit
    the deadline (the turn pauses after it)."""

    block: dict[str, Any]
    changed: bool
    stopped_by_deadline: bool = False


class ToolBox:
    """Both tools for one workspace.

    Args:
        workspace: the folder the tools are confined to.
        repo_dir: the repository inside it, where commands start and relative paths point.
        env: the environment of bash commands (no secrets).
        timeout_seconds: one bash command's time limit.
        output_limit: characters of tool output Claude sees.
        redact: removes secrets from every result.
    """

    def __init__(
        self,
        *,
        workspace: Path,
        repo_dir: Path,
        env: Mapping[str, str],
        timeout_seconds: float,
        output_limit: int,
        redact: Callable[[str], str],
    ) -> None:
        self.output_limit = output_limit
        self.bash = BashTool(
            start_dir=repo_dir,
            workspace=workspace,
            env=env,
            timeout_seconds=timeout_seconds,
            output_limit=output_limit,
            redact=redact,
        )
        self.editor = TextEditor(workspace=workspace, base=repo_dir, output_limit=output_limit, redact=redact)
        self.redact = redact

    def definitions(self) -> list[dict[str, Any]]:
        """The ``tools`` of a Messages API request (Anthropic-defined tools: type and name only)."""
        return [
            {"type": BASH_TYPE, "name": BASH_NAME},
            {"type": EDITOR_TYPE, "name": EDITOR_NAME, "max_characters": self.output_limit},
        ]

    @staticmethod
    def describe(name: str, tool_input: Mapping[str, Any]) -> str:
        """What a call does, for people: ``running `pytest -q```, ``editing app.py``."""
        if name == BASH_NAME:
            if tool_input.get("restart"):
                return "restarting the shell"
            command = " ".join(str(tool_input.get("command", "")).split())
            if len(command) > DESCRIBE_LIMIT:
                command = command[: DESCRIBE_LIMIT - 1] + "…"
            return f"running `{command}`" if command else "running a command"
        if name == EDITOR_NAME:
            path = Path(str(tool_input.get("path", "") or "a file")).name or "a file"
            verb = {"view": "reading", "create": "creating", "str_replace": "editing", "insert": "editing"}
            return f"{verb.get(str(tool_input.get('command')), 'using the editor on')} {path}"
        return f"using {name}"

    async def run(self, call: Mapping[str, Any], *, time_left: float | None = None) -> ToolOutcome:
        """Run one ``tool_use`` block (``id``, ``name``, ``input``) within ``time_left`` seconds."""
        tool_id = str(call["id"])
        name = call.get("name")
        tool_input = call.get("input") or {}
        if not isinstance(tool_input, Mapping):
            return self._result(tool_id, "The tool input must be an object.", is_error=True, changed=False)
        if name == BASH_NAME:
            if tool_input.get("restart"):
                return self._result(tool_id, await self.bash.restart(), is_error=False, changed=False)
            command = tool_input.get("command")
            if not isinstance(command, str):
                return self._result(
                    tool_id, "`command` is required: the bash command to run.", is_error=True, changed=False
                )
            shortened = time_left is not None and time_left < self.bash.timeout_seconds
            result = await self.bash.run(command, limit=time_left)
            return ToolOutcome(
                self._block(tool_id, result.text, result.is_error),
                changed=True,
                stopped_by_deadline=result.timed_out and shortened,
            )
        if name == EDITOR_NAME:
            edit = self.editor.run(tool_input)
            return self._result(tool_id, edit.text, is_error=edit.is_error, changed=edit.changed)
        return self._result(
            tool_id,
            f"There is no tool named {name!r}: use {BASH_NAME} or {EDITOR_NAME}.",
            is_error=True,
            changed=False,
        )

    async def close(self) -> None:
        """Stop everything the bash tool left running."""
        await self.bash.close()

    def _result(self, tool_id: str, text: str, *, is_error: bool, changed: bool) -> ToolOutcome:
        return ToolOutcome(self._block(tool_id, text, is_error), changed=changed)

    def _block(self, tool_id: str, text: str, is_error: bool) -> dict[str, Any]:
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": tool_id,
            "content": self.redact(text) or "(no output)",
        }
        if is_error:
            block["is_error"] = True
        return block
