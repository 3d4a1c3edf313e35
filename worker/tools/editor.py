"""Anthropic's text editor tool (``text_editor_20250728``), confined to the workspace.

Commands: ``view`` (a file with line numbers, optionally a ``view_range``; a folder two levels deep),
``create``, ``str_replace`` (``old_str`` must occur exactly once) and ``insert`` (after ``insert_line``;
0 is the top). Paths may be absolute or relative to the repository. Every path is resolved with symlinks
followed and refused unless it stays inside the workspace, so neither ``../`` nor a symlink the agent
made can reach the rest of the machine. Binary and non-UTF-8 files are described, never shown or edited.

Errors come back as a :class:`EditResult` with ``is_error`` and a message saying what to do, the way the
API documentation suggests tool errors be reported to Claude.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

TOOL_TYPE: Final = "text_editor_20250728"
TOOL_NAME: Final = "str_replace_based_edit_tool"
#: Lines of context shown around an edit, so Claude can check it without another view.
SNIPPET_CONTEXT_LINES: Final = 4
#: Folder listings stop after this many entries.
MAX_LISTING_ENTRIES: Final = 400
#: Files larger than this are not loaded for editing (a text editor is the wrong tool for them).
MAX_EDIT_BYTES: Final = 10 * 1024 * 1024
#: Folders never worth listing.
SKIPPED_FOLDERS: Final = frozenset(
    {".git", "node_modules", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache"}
)


@dataclass(frozen=True)
class EditResult:
    """The tool's answer to Claude; ``changed`` says whether a file was written."""

    text: str
    is_error: bool = False
    changed: bool = False


class EditorError(Exception):
    """A command cannot be carried out; the message tells Claude what to do instead."""


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{number:6}\t{line}" for number, line in enumerate(lines, start=first))


class TextEditor:
    """The text editor tool for one workspace.

    Args:
        workspace: the only folder the tool may read or write (symlinks resolved).
        base: where relative paths start (the repository).
        output_limit: characters of a ``view`` shown at most (the tool's ``max_characters``).
        redact: applied to everything shown.
    """

    def __init__(
        self,
        *,
        workspace: Path,
        base: Path,
        output_limit: int,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.workspace = workspace.resolve()
        self.base = base
        self.output_limit = output_limit
        self.redact = redact

    def run(self, tool_input: Mapping[str, Any]) -> EditResult:
        """Carry out one command; never raises for a bad input (the error goes back to Claude)."""
        command = tool_input.get("command")
        try:
            if command == "view":
                return EditResult(self.redact(self._view(tool_input)))
            if command == "create":
                return self._create(tool_input)
            if command == "str_replace":
                return self._str_replace(tool_input)
            if command == "insert":
                return self._insert(tool_input)
            raise EditorError(f"Unknown command {command!r}: use one of view, create, str_replace, insert.")
        except EditorError as error:
            return EditResult(self.redact(str(error)), is_error=True)
        except OSError as error:
            return EditResult(
                self.redact(f"The file system refused: {error.strerror or error}."), is_error=True
            )

    # --- paths ----------------------------------------------------------------------------------------

    def resolve(self, raw: Any) -> Path:
        """The real path of ``raw``, or :class:`EditorError` if it is missing or leaves the workspace."""
        if not isinstance(raw, str) or not raw.strip():
            raise EditorError("`path` is required: give a file path inside the workspace.")
        if "\x00" in raw:
            raise EditorError("`path` contains a NUL character.")
        path = Path(raw)
        if not path.is_absolute():
            path = self.base / path
        real = Path(os.path.realpath(path))
        if real != self.workspace and not real.is_relative_to(self.workspace):
            raise EditorError(
                f"{raw} is outside the workspace ({self.workspace}) once links are followed: the editor only "
                "works on files inside it."
            )
        return real

    def _shown(self, path: Path) -> str:
        return str(path)

    # --- commands -------------------------------------------------------------------------------------

    def _view(self, tool_input: Mapping[str, Any]) -> str:
        path = self.resolve(tool_input.get("path"))
        if path.is_dir():
            if tool_input.get("view_range") is not None:
                raise EditorError("`view_range` only applies to files, not folders.")
            return self._listing(path)
        if not path.exists():
            raise EditorError(f"{self._shown(path)} does not exist. View its folder to see what is there.")
        text = self._read_text(path)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        first = 1
        view_range = tool_input.get("view_range")
        if view_range is not None:
            if (
                not isinstance(view_range, list)
                or len(view_range) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
            ):
                raise EditorError("`view_range` must be two line numbers [start, end]; end -1 means the end.")
            start, end = view_range
            if start < 1 or start > max(len(lines), 1):
                raise EditorError(
                    f"`view_range` start {start} is outside the file's lines 1 to {len(lines)}."
                )
            if end == -1:
                end = len(lines)
            if end < start or end > len(lines):
                raise EditorError(
                    f"`view_range` end {end} must be between {start} and {len(lines)} (or -1 for the end)."
                )
            lines, first = lines[start - 1 : end], start
        shown = _numbered(lines, first)
        limit = tool_input.get("max_characters")
        cap = self.output_limit if not isinstance(limit, int) or limit <= 0 else min(limit, self.output_limit)
        if len(shown) > cap:
            shown = (
                shown[:cap]
                + f"\n[... the view was cut at {cap:,} characters: use view_range to read the rest ...]"
            )
        return shown or "(the file is empty)"

    def _listing(self, folder: Path) -> str:
        entries: list[str] = []
        for root, dirs, files in os.walk(folder):
            depth = Path(root).relative_to(folder).parts
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS)
            if len(depth) >= 2:
                dirs[:] = []
            for name in [*(d + "/" for d in dirs), *sorted(f for f in files if not f.startswith("."))]:
                entries.append(
                    str(Path(root, name).relative_to(folder)) + ("/" if name.endswith("/") else "")
                )
                if len(entries) >= MAX_LISTING_ENTRIES:
                    entries.append("[... more entries not listed: use bash (find, ls) to see them ...]")
                    return self._listing_text(folder, entries)
        return self._listing_text(folder, entries)

    def _listing_text(self, folder: Path, entries: list[str]) -> str:
        header = f"Files and folders in {self._shown(folder)}, two levels deep, hidden ones left out:"
        return header + "\n" + ("\n".join(entries) if entries else "(empty)")

    def _read_text(self, path: Path) -> str:
        if not path.is_file():
            raise EditorError(f"{self._shown(path)} is not a regular file.")
        size = path.stat().st_size
        if size > MAX_EDIT_BYTES:
            raise EditorError(
                f"{self._shown(path)} is {size:,} bytes, too large for the editor: use bash (head, sed, "
                "grep)."
            )
        data = path.read_bytes()
        if b"\x00" in data:
            raise EditorError(
                f"{self._shown(path)} is a binary file ({size:,} bytes): inspect it with bash (file, xxd)."
            )
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise EditorError(
                f"{self._shown(path)} is not UTF-8 text: inspect or convert it with bash (file, iconv)."
            ) from None

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The parent's real path may have changed since resolve() (a symlink made meanwhile): check again.
        self.resolve(str(path))
        path.write_text(text)

    def _create(self, tool_input: Mapping[str, Any]) -> EditResult:
        path = self.resolve(tool_input.get("path"))
        text = tool_input.get("file_text")
        if not isinstance(text, str):
            raise EditorError("`file_text` is required for create: the whole content of the new file.")
        if path.is_dir():
            raise EditorError(f"{self._shown(path)} is a folder: give a file path.")
        existed = path.exists()
        self._write(path, text)
        verb = "Overwrote" if existed else "Created"
        return EditResult(f"{verb} {self._shown(path)} ({len(text):,} characters).", changed=True)

    def _str_replace(self, tool_input: Mapping[str, Any]) -> EditResult:
        path = self.resolve(tool_input.get("path"))
        old = tool_input.get("old_str")
        new = tool_input.get("new_str", "")
        if not isinstance(old, str) or not old:
            raise EditorError("`old_str` is required: the exact text to replace, occurring once in the file.")
        if not isinstance(new, str):
            raise EditorError("`new_str` must be text (leave it out to delete `old_str`).")
        if not path.exists():
            raise EditorError(f"{self._shown(path)} does not exist: use create to make it.")
        text = self._read_text(path)
        count = text.count(old)
        if count == 0:
            raise EditorError(
                f"No replacement was made: old_str does not appear verbatim in {self._shown(path)}. View the "
                "file and copy the text exactly, whitespace included."
            )
        if count > 1:
            lines = [text[:match].count("\n") + 1 for match in _find_all(text, old)]
            raise EditorError(
                f"No replacement was made: old_str occurs {count} times in {self._shown(path)} (lines "
                f"{', '.join(map(str, lines[:20]))}). Include more surrounding text so it is unique."
            )
        index = text.index(old)
        updated = text[:index] + new + text[index + len(old) :]
        self._write(path, updated)
        start_line = text[:index].count("\n") + 1
        return EditResult(
            self.redact(self._snippet(path, updated, start_line, new.count("\n") + 1)), changed=True
        )

    def _insert(self, tool_input: Mapping[str, Any]) -> EditResult:
        path = self.resolve(tool_input.get("path"))
        line = tool_input.get("insert_line")
        new = tool_input.get("insert_text", tool_input.get("new_str"))
        if not isinstance(line, int) or isinstance(line, bool):
            raise EditorError("`insert_line` is required: the line after which to insert (0 for the top).")
        if not isinstance(new, str):
            raise EditorError("`insert_text` is required: the text to insert.")
        if not path.exists():
            raise EditorError(f"{self._shown(path)} does not exist: use create to make it.")
        text = self._read_text(path)
        lines = text.split("\n")
        trailing = text.endswith("\n")
        if trailing:
            lines.pop()
        if line < 0 or line > len(lines):
            raise EditorError(f"`insert_line` {line} is outside the file: use 0 to {len(lines)}.")
        inserted = new.removesuffix("\n").split("\n")
        lines[line:line] = inserted
        updated = "\n".join(lines) + ("\n" if trailing or not text else "")
        self._write(path, updated)
        return EditResult(self.redact(self._snippet(path, updated, line + 1, len(inserted))), changed=True)

    def _snippet(self, path: Path, text: str, first_line: int, count: int) -> str:
        lines = text.split("\n")
        start = max(1, first_line - SNIPPET_CONTEXT_LINES)
        end = min(len(lines), first_line + count - 1 + SNIPPET_CONTEXT_LINES)
        shown = _numbered(lines[start - 1 : end], start)
        return f"Edited {self._shown(path)}. The changed part, with line numbers:\n{shown}"


def _find_all(text: str, needle: str) -> list[int]:
    found: list[int] = []
    start = text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found
