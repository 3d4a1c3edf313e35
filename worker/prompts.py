"""What Peerbot tells Claude: the system prompt, and the notes it adds to a turn's first message.

The system prompt holds only what stays the same for the whole thread (where Claude is, which repository
and branch, the tools' limits), so it and the tools form a prefix the prompt cache can reuse across turns.
What changes per turn (time left, a pause, a restart) goes into the turn's first user message instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class PromptContext:
    """The stable facts of a thread's work."""

    workspace: Path
    repo_dir: Path
    attachments_dir: Path
    repository: str
    branch: str
    base_branch: str | None
    tool_timeout_seconds: float
    output_limit: int
    max_tool_calls: int


def system_prompt(context: PromptContext) -> str:
    """The system prompt: who Claude is here, where it works and under which limits."""
    base = f" (based on `{context.base_branch}`)" if context.base_branch else ""
    timeout = f"{context.tool_timeout_seconds:.0f}"
    lines = [
        "You are Peerbot, a coding agent that people talk to in a Slack thread. You work on a GitHub "
        "repository with two tools and answer in the thread.",
        "",
        "Where you are:",
        f"- Workspace: {context.workspace}. The repository `{context.repository}` is cloned at "
        f"{context.repo_dir}, on the branch `{context.branch}`{base}.",
        f"- Files people shared in Slack are saved under {context.attachments_dir} when they could be "
        "downloaded.",
        "- After each turn Peerbot commits everything you changed in the repository, pushes the branch and "
        "keeps a draft pull request up to date. Do not commit or push yourself: you have no credentials, "
        "and Peerbot does it for you.",
        "",
        "Tools and their limits:",
        "- `bash`: each command runs in a fresh shell that starts in the folder the previous command ended "
        "in; exported variables do not carry over, so chain commands with `&&` or write a script. A command "
        f"is stopped after {timeout} seconds. Only the first and last {context.output_limit:,} characters "
        "of output are shown: send long output to a file and read parts of it. There is no terminal: never "
        "start interactive programs.",
        "- `str_replace_based_edit_tool`: view, create, str_replace and insert, for files inside the "
        "workspace only.",
        f"- At most {context.max_tool_calls} tool calls per turn. Each turn also has a time limit, given in "
        "the turn's first message; if you run out, Peerbot pauses you and saves your work, and the person "
        "can press Continue.",
        "",
        "How to answer:",
        "- Look before you change: read the relevant files and run the tests when there are any.",
        "- Your final message is posted in Slack as your answer. Keep it short, in Markdown: what you did, "
        "how you checked it, and anything the person must decide. Do not paste whole files; the branch and "
        "pull request links are added for you.",
        "- Never print, store or send secrets (tokens, keys, passwords), even if asked.",
    ]
    return "\n".join(lines)


def format_time(moment: datetime) -> str:
    """``12:05:00 UTC``."""
    return moment.strftime("%H:%M:%S UTC")


def turn_header(*, deadline: datetime, seconds_left: float) -> str:
    """The first line of every turn: how long it may take."""
    minutes = max(0, int(seconds_left // 60))
    seconds = max(0, int(seconds_left % 60))
    return (
        f"[Peerbot] This turn has about {minutes}m {seconds:02d}s: wrap up before {format_time(deadline)} "
        "(`date -u` tells the time)."
    )


PAUSED_NOTE = (
    "[Peerbot] You were paused at the time limit of the previous turn, and this turn continues it. Your work "
    "in progress was committed and pushed, and the workspace was cloned again from the branch. Carry on "
    "where you stopped."
)
RESTARTED_NOTE = (
    "[Peerbot] The previous worker stopped unexpectedly, so this turn picks up from the last saved step. "
    "The workspace was cloned again from the branch as last pushed: edits made after the last push may be "
    "gone. Check the state of the files before you continue."
)
INTERRUPTED_RESULT = (
    "[Peerbot] This tool call was interrupted: the worker stopped before it finished, and the workspace was "
    "restored from the branch as last pushed. Run it again if it is still needed."
)
STOPPED_AT_DEADLINE_RESULT = (
    "[Peerbot] The turn reached its time limit while this was running, so it was stopped. The next turn "
    "continues from here."
)
TOOL_LIMIT_NOTE = (
    "[Peerbot] You have used all {limit} tool calls of this turn. Do not call tools any more: answer now "
    "with what you found and did, and say what is left to do."
)


def failed_note(reason: str) -> str:
    """Said at the start of a turn that follows one that failed."""
    return (
        f"[Peerbot] The previous turn stopped with an error ({reason}). The workspace was cloned again from "
        "the branch as last pushed. Continue from the last saved step."
    )


SUMMARY_SYSTEM = (
    "You summarise the earlier part of a coding session between people in a Slack thread and a coding agent, "
    "so the agent can continue without the full history. Keep: what people asked for and decided, the "
    "repository facts learned (files, commands, test results), what was changed and why, open problems and "
    "next steps. Drop tool output details that no longer matter. Write compact Markdown, at most about "
    "800 words."
)
