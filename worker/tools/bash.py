"""Anthropic's bash tool (``bash_20250124``), run for real in the workspace with hard limits.

Each command runs in a fresh ``bash`` in its own process group (its own session), starting in the folder
the previous command ended in, with the worker's secrets removed from its environment:

- **Timeout**: a command that runs longer than its timeout (and never past the turn's deadline) gets
  SIGTERM to its whole process group, then SIGKILL after a short grace; Claude is told it timed out.
- **Output cap**: standard output and error are read as they come (so a command printing megabytes never
  blocks or fills memory); Claude sees the first and the last part, with a note saying how much was cut
  and how to see the rest. Binary output is described, not shown.
- **Background processes** still holding the output after the command exits are left running (a server
  started with ``&``); their later output is dropped. :meth:`BashTool.close` kills every process group
  this tool started, so nothing outlives the worker.

``{"restart": true}`` forgets the current folder (back to the repository) and kills what is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: After SIGTERM, a timed-out command gets this long to exit before SIGKILL.
KILL_GRACE_SECONDS: Final = 2.0
#: Once the shell has exited, output still arriving (from processes it left running) is read this long.
DRAIN_SECONDS: Final = 1.0
#: Output is read in chunks of this many bytes.
READ_CHUNK: Final = 64 * 1024
#: Output with more than this share of control bytes is treated as binary and not shown.
BINARY_SHARE: Final = 0.10
#: The type and name Anthropic's API gives the bash tool (checked against the SDK's ToolBash20250124Param).
TOOL_TYPE: Final = "bash_20250124"
TOOL_NAME: Final = "bash"


@dataclass(frozen=True)
class CommandResult:
    """What a command did, as Claude will read it."""

    text: str
    exit_code: int | None
    timed_out: bool = False
    truncated: bool = False

    @property
    def is_error(self) -> bool:
        return self.timed_out or self.exit_code is None


class _CappedOutput:
    """Keeps the first and last ``limit // 2`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def cut(self) -> int:
        return self.total - len(self.head) - len(self.tail)


def _looks_binary(data: bytes) -> bool:
    if not data:
        return False
    if b"\x00" in data:
        return True
    control = sum(1 for byte in data if byte < 32 and byte not in (9, 10, 13, 27))
    return control / len(data) > BINARY_SHARE


def _script(command: str, state_file: Path, start_dir: Path, fallback_dir: Path) -> str:
    """The shell script that runs ``command`` and records the folder it ended in."""
    state = shlex.quote(str(state_file))
    return (
        f"trap 'pwd > {state} 2>/dev/null' EXIT\n"
        f"cd {shlex.quote(str(start_dir))} 2>/dev/null || cd {shlex.quote(str(fallback_dir))}\n"
        f"{command}\n"
    )


class BashTool:
    """Runs bash commands in ``workspace`` with a timeout and an output cap (see the module docstring).

    Args:
        start_dir: where the first command runs (the repository).
        workspace: the folder a command falls back to when its starting folder is gone.
        env: the environment of every command (the caller removes secrets from it).
        timeout_seconds: the longest a command may run.
        output_limit: characters of output Claude sees (first and last halves).
        redact: applied to the output before anyone sees it.
    """

    def __init__(
        self,
        *,
        start_dir: Path,
        workspace: Path,
        env: Mapping[str, str],
        timeout_seconds: float,
        output_limit: int,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.start_dir = start_dir
        self.workspace = workspace
        self.cwd = start_dir
        self.env = dict(env)
        self.timeout_seconds = timeout_seconds
        self.output_limit = output_limit
        self.redact = redact
        self._state_dir = Path(tempfile.mkdtemp(prefix="peerbot-bash-"))
        self._groups: set[int] = set()

    async def run(self, command: str, *, limit: float | None = None) -> CommandResult:
        """Run one command; ``limit`` (seconds) shortens the tool's own timeout, never lengthens it."""
        if not command.strip():
            return CommandResult("No command given: pass the bash command to run in `command`.", None)
        limit = self.timeout_seconds if limit is None else max(0.0, min(limit, self.timeout_seconds))
        state_file = self._state_dir / "cwd"
        state_file.unlink(missing_ok=True)
        # Our own pipe, not asyncio's: asyncio waits for its pipes to close before it reports the exit,
        # and a background process the command started may hold them open for as long as it runs.
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                _script(command, state_file, self.cwd, self.start_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                cwd=self.workspace,
                env=self.env,
                start_new_session=True,
            )
        except OSError as error:
            os.close(read_fd)
            return CommandResult(f"The command could not start: {error}", None)
        finally:
            os.close(write_fd)
        self._groups.add(process.pid)
        output = _CappedOutput(self.output_limit)
        stream = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
        )
        reader = asyncio.create_task(self._read(stream, output))
        timed_out = False
        try:
            async with asyncio.timeout(limit):
                await process.wait()
        except TimeoutError:
            timed_out = True
            await self._kill_group(process)
        finally:
            if process.returncode is None:  # cancelled (the turn is stopping): leave nothing behind
                await self._kill_group(process)
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    await asyncio.shield(reader)
                left_running = False
            except TimeoutError:
                left_running = True
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            transport.close()
        self._remember_cwd(state_file)
        return self._result(output, process.returncode, timed_out, limit, left_running)

    def _remember_cwd(self, state_file: Path) -> None:
        """The next command starts where this one ended (the shell wrote its folder on exit)."""
        with contextlib.suppress(OSError, ValueError):
            ended_in = state_file.read_text().strip()
            if ended_in and Path(ended_in).is_dir():
                self.cwd = Path(ended_in)

    async def restart(self) -> str:
        """Kill everything this tool started and go back to the repository."""
        self._kill_all()
        self.cwd = self.start_dir
        return f"The bash tool was restarted: commands run in {self.start_dir} again."

    def _kill_all(self) -> None:
        for group in list(self._groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            self._groups.discard(group)

    async def close(self) -> None:
        """Kill every process group this tool started (background processes included)."""
        self._kill_all()
        with contextlib.suppress(OSError):
            for child in self._state_dir.iterdir():
                child.unlink()
            self._state_dir.rmdir()

    @staticmethod
    async def _read(stream: asyncio.StreamReader, output: _CappedOutput) -> None:
        while chunk := await stream.read(READ_CHUNK):
            output.add(chunk)

    @staticmethod
    async def _kill_group(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(KILL_GRACE_SECONDS):
                await asyncio.shield(process.wait())
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    def _result(
        self,
        output: _CappedOutput,
        exit_code: int | None,
        timed_out: bool,
        limit: float,
        left_running: bool,
    ) -> CommandResult:
        head, tail = bytes(output.head), bytes(output.tail)
        notes: list[str] = []
        if _looks_binary(head + tail):
            body = f"(binary output, {output.total:,} bytes, not shown: redirect it to a file and inspect it)"
        else:
            body = head.decode(errors="replace")
            if output.cut:
                body += (
                    f"\n\n[... {output.cut:,} bytes of output cut: only the first and last "
                    f"{self.output_limit:,} characters are shown. Redirect the output to a file and read "
                    "parts of it (head, tail, grep) to see more ...]\n\n"
                )
            body += tail.decode(errors="replace")
        if timed_out:
            notes.append(
                f"[The command was stopped after {limit:.0f} seconds (the time limit of one command). Run "
                "long jobs in the background with output to a file, or make them faster.]"
            )
        elif exit_code is not None and exit_code != 0:
            notes.append(f"[exit code {exit_code}]")
        if left_running:
            notes.append(
                "[Processes the command started are still running; their further output is not shown.]"
            )
        text = body.rstrip("\n")
        if notes:
            text = (text + "\n" if text else "") + "\n".join(notes)
        if not text:
            text = "(no output)"
        return CommandResult(self.redact(text), exit_code, timed_out, bool(output.cut))
