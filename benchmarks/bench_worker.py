"""Worker benchmark: how soon a person sees the worker, how fast a session comes back, what a checkpoint
writes, and how many Slack calls a turn makes.

1. **Start to first Slack edit**: a real ``peerbot worker`` process is started against the stand-ins and
   the time to its first edit of the status message is taken from the Slack stand-in's call log (the clone
   is not involved: it comes later). Target: under 1.5 s.
2. **Session restore** at about 10k, 50k and 100k tokens from the GCS stand-in (fake-gcs-server), each
   session built the way a worker builds it (one checkpoint per step), read back by a store with a cold
   cache. Target: under 200 ms at 100k.
3. **Bytes per checkpoint** as the session grows: what each append writes (segments and head), averaged
   per stretch of the session. It must stay proportional to the step, not to the session (the occasional
   merge of segments is visible in the maximum).
4. **Slack calls per turn** for a turn of many tool calls against the Slack stand-in, with the real edit
   interval (one a second): the calls, the steps, and any 429 (there must be none).

Run ``python -m benchmarks.bench_worker`` (about a minute) or with ``--quick`` (a smoke run for CI). Results
go to ``benchmarks/results/worker-<time>.json``; the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from peerbot.session.format import Message, SessionKey, Step, TokenUsage
from peerbot.session.gcs import GcsObjects
from peerbot.session.store import ObjectBackend, SessionStore, StoredObject
from peerbot.testing.claude import Reply
from peerbot.testing.gcs import GcsStandIn
from peerbot.testing.worker import GITHUB_TOKEN, ORGANIZATION, WorkerWorld

REPOSITORY: Final = pathlib.Path(__file__).resolve().parents[1]
RESULTS: Final = REPOSITORY / "benchmarks" / "results"
TARGET_FIRST_EDIT_SECONDS: Final = 1.5
TARGET_RESTORE_100K_MS: Final = 200.0
SESSION_SIZES: Final = (10_000, 50_000, 100_000)
#: A typical step: a tool result or a model response of about 300 tokens (1,200 characters).
STEP_TOKENS: Final = 300
CHARS_PER_TOKEN: Final = 4
#: Tool calls in the Slack-calls turn.
TOOL_CALLS: Final = 12


class CountingObjects(ObjectBackend):
    """Counts the bytes written through an object backend."""

    def __init__(self, inner: ObjectBackend) -> None:
        self.inner = inner
        self.written = 0
        self.writes = 0

    def read(self, name: str) -> StoredObject | None:
        return self.inner.read(name)

    def read_many(self, names: Sequence[str]) -> list[StoredObject | None]:
        return self.inner.read_many(names)

    def write(self, name: str, data: bytes, *, if_generation_match: int) -> int:
        self.written += len(data)
        self.writes += 1
        return self.inner.write(name, data, if_generation_match=if_generation_match)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def list_names(self, prefix: str) -> list[str]:
        return self.inner.list_names(prefix)

    def location(self, name: str) -> str:
        return self.inner.location(name)


def _step(index: int) -> Step:
    text = f"step {index}: " + ("lorem ipsum dolor sit amet " * (STEP_TOKENS * CHARS_PER_TOKEN // 27))
    role = "assistant" if index % 2 else "user"
    usage = TokenUsage(input=STEP_TOKENS, output=STEP_TOKENS // 10) if role == "assistant" else TokenUsage()
    return Step(
        message=Message.model_validate({"role": role, "content": [{"type": "text", "text": text}]}),
        usage=usage,
    )


# --- 1. start to first Slack edit ---------------------------------------------------------------------------


def first_edit(runs: int) -> dict[str, Any]:
    """Seconds from starting ``peerbot worker`` to its first edit of the status message."""
    samples: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        root = pathlib.Path(folder)
        with WorkerWorld(root) as world:
            world.seed_repository(world.slack.human, {"app.py": "x = 1\n"})
            world.claude.load([Reply.text("Hello.")] * runs)
            for run in range(runs):
                thread = world.new_thread("@peerbot hello")
                status_ts = world.post_status_message(thread)
                workspace = root / f"pod-{run}"
                env = {
                    k: v for k, v in os.environ.items() if not k.startswith(("PEERBOT_", "SLACK_", "GITHUB_"))
                }
                env.update(
                    {
                        "SLACK_BOT_TOKEN": world.slack.bot_token,
                        "SLACK_API_URL": world.slack.api_url,
                        "ANTHROPIC_API_KEY": world.claude.api_key,
                        "ANTHROPIC_BASE_URL": world.claude.url,
                        "GITHUB_TOKEN": GITHUB_TOKEN,
                        "GITHUB_API_URL": world.github.api_url,
                        "GITHUB_ORGANIZATION": ORGANIZATION,
                        "SESSION_STORE": "local",
                        "SESSION_DIR": str(root / "sessions"),
                        "WORKSPACE_DIR": str(workspace),
                        "PEERBOT_RESULT_FILE": str(root / f"pod-{run}.json"),
                        "PEERBOT_CONVERSATION": thread.conversation,
                        "PEERBOT_TEAM": thread.team,
                        "PEERBOT_CHANNEL": thread.channel,
                        "PEERBOT_THREAD_TS": thread.ts,
                        "PEERBOT_USER": thread.user,
                        "PEERBOT_REQUESTED_TS": thread.ts,
                        "PEERBOT_STATUS_MESSAGE_TS": status_ts,
                        "LOG_FORMAT": "json",
                    }
                )
                started = time.time()
                done = subprocess.run(
                    [sys.executable, "-m", "peerbot.cli", "worker"], env=env, capture_output=True, timeout=120
                )
                if done.returncode != 0:
                    raise RuntimeError(f"the worker failed: {done.stderr.decode()[-2000:]}")
                edits = [
                    call.at
                    for call in world.slack.calls("chat.update")
                    if call.params.get("ts") == status_ts and call.at >= started
                ]
                samples.append(min(edits) - started)
    return {
        "runs": runs,
        "median_s": statistics.median(samples),
        "max_s": max(samples),
        "target_s": TARGET_FIRST_EDIT_SECONDS,
        "met": max(samples) < TARGET_FIRST_EDIT_SECONDS,
    }


# --- 2 and 3. session restore and bytes per checkpoint ---------------------------------------------------


def sessions(
    gcs: GcsStandIn, sizes: Sequence[int], reads: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    restore: list[dict[str, Any]] = []
    growth: list[dict[str, Any]] = []
    for size in sizes:
        bucket = gcs.create_bucket()
        backend = CountingObjects(GcsObjects(bucket))
        store = SessionStore(backend)
        key = SessionKey("T0BENCH", "C0BENCH", f"1700000000.{size:06d}")
        generation = 0
        steps = size // STEP_TOKENS
        window: list[int] = []
        for index in range(steps):
            before = backend.written
            generation = store.append(key, [_step(index)], expected_generation=generation)
            window.append(backend.written - before)
            if size == max(sizes) and (index + 1) % max(1, steps // 6) == 0:
                growth.append(
                    {
                        "steps": index + 1,
                        "tokens": (index + 1) * STEP_TOKENS,
                        "mean_bytes_per_checkpoint": round(statistics.mean(window)),
                        "max_bytes_per_checkpoint": max(window),
                    }
                )
                window = []
        step_bytes = len(_step(0).model_dump_json(by_alias=True))
        timings = []
        for _ in range(reads):
            cold = SessionStore(GcsObjects(gcs.client().bucket(bucket.name)))
            started = time.perf_counter()
            session = cold.load(key)
            timings.append((time.perf_counter() - started) * 1000)
            if session is None or len(session.steps) != steps:
                raise RuntimeError(f"the {size}-token session did not come back whole")
        head = store.load(key)
        restore.append(
            {
                "tokens": size,
                "steps": steps,
                "segments": len(head.head.segments) if head else 0,
                "median_ms": round(statistics.median(timings), 1),
                "max_ms": round(max(timings), 1),
                "step_bytes": step_bytes,
            }
        )
    return restore, growth


# --- 4. Slack calls per turn ------------------------------------------------------------------------------


async def slack_calls(tool_calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        root = pathlib.Path(folder)
        with WorkerWorld(root) as world:
            world.seed_repository(world.slack.human, {"app.py": "x = 1\n"})
            thread = world.new_thread("@peerbot look around")
            status_ts = world.post_status_message(thread)
            script: list[Any] = [Reply.bash(f"echo step {n}").paced(0.02) for n in range(tool_calls)]
            world.claude.load([*script, Reply.text("Looked around.")])
            before = len(world.slack.calls())
            run = await world.run_turn(thread, status_ts=status_ts, progress_interval=1.0)
            calls = world.slack.calls()[before:]
    model_steps = tool_calls + 1
    return {
        "model_steps": model_steps,
        "tool_calls": tool_calls,
        "slack_calls": len(calls),
        "status_edits": sum(1 for call in calls if call.method == "chat.update"),
        "rate_limited": sum(1 for call in calls if call.status == 429),
        "by_method": {
            method: sum(1 for c in calls if c.method == method)
            for method in sorted({c.method for c in calls})
        },
        "turn_seconds": round(run.seconds, 2),
        "within_budget": len(calls) <= model_steps + tool_calls + 12,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run for CI (fewer samples)")
    parser.add_argument("--output", type=pathlib.Path, help="where to write the JSON results")
    args = parser.parse_args(argv)
    runs, reads = (2, 3) if args.quick else (5, 7)

    print("measuring: start to first Slack edit …", flush=True)
    start = first_edit(runs)
    print("measuring: session restore and bytes per checkpoint …", flush=True)
    with GcsStandIn() as gcs:
        restore, growth = sessions(gcs, SESSION_SIZES, reads)
    print("measuring: Slack calls per turn …", flush=True)
    calls = asyncio.run(slack_calls(TOOL_CALLS if not args.quick else 4))

    print()
    print(f"{'measure':44} {'value':>14} {'target':>14}")
    first = f"{start['median_s']:>6.2f} / {start['max_s']:.2f} s"
    print(f"{'start → first Slack edit (median / max)':44} {first} {'< 1.5 s':>14}")
    for row in restore:
        label = f"restore {row['tokens'] // 1000}k tokens ({row['steps']} steps, {row['segments']} seg.)"
        target = "< 200 ms" if row["tokens"] == 100_000 else ""
        print(f"{label:44} {row['median_ms']:>8.1f} ms    {target:>14}")
    for row in growth:
        label = f"bytes/checkpoint at {row['tokens'] // 1000}k tokens (mean / max)"
        sizes = f"{row['mean_bytes_per_checkpoint']:>6} / {row['max_bytes_per_checkpoint']:<7}"
        print(f"{label:44} {sizes} {'~ step size':>14}")
    print(f"{'one step, encoded':44} {restore[0]['step_bytes']:>8} B")
    label = f"Slack calls ({calls['model_steps']} model steps, {calls['tool_calls']} tools)"
    print(f"{label:44} {calls['slack_calls']:>14} {'≤ steps + 12':>14}")
    print(f"{'Slack 429 answers':44} {calls['rate_limited']:>14} {'0':>14}")

    results = {
        "benchmark": "worker",
        "when": datetime.now(UTC).isoformat(),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "quick": args.quick,
        "first_edit": start,
        "restore": restore,
        "bytes_per_checkpoint": growth,
        "slack_calls": calls,
    }
    output = args.output or RESULTS / f"worker-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {output}")
    restore_100k = next(row for row in restore if row["tokens"] == 100_000)
    met = start["met"] and restore_100k["median_ms"] < TARGET_RESTORE_100K_MS and calls["rate_limited"] == 0
    return 0 if met and calls["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
