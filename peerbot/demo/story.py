"""The demo's story: alice's small repository with a bug, what she asks, and what the scripted Claude does.

Everything here is plain data and pure functions, so the story can be read (and changed) in one place:

1. alice mentions Peerbot in #general: the checkout tests fail since a discount change.
2. Claude runs the tests (red), reads ``pricing.py``, fixes ``total()`` with the text editor tool, runs the
   tests again (green) and answers with a summary. The worker pushes the branch and opens a draft pull
   request.
3. alice replies in the thread (no mention needed) asking for a test that keeps the bug from coming back.
   The next worker restores the session, so Claude's first request of that turn carries the whole first
   turn; it adds the test, runs the tests and answers.

The scripted replies are written in advance, but the tools really run: the edits land in a real clone,
the tests really run with ``python3``, and the final answers say what the test output really showed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from peerbot.testing.claude import ReceivedRequest, RecordedRequest, Reply, Step, Text

#: alice's repository (peerbot-community/peerbot-<her user id>, as Peerbot names it), before the fix.
REPOSITORY_FILES: Final[Mapping[str, str]] = {
    "README.md": ("# shop\n\nA tiny checkout. Run the tests with `python3 -m unittest`.\n"),
    "pricing.py": (
        '"""Prices for the checkout."""\n'
        "\n\n"
        "def total(prices: list[float], discount: float = 0.0) -> float:\n"
        '    """The sum of ``prices`` after ``discount`` (0.1 means 10% off), rounded to cents."""\n'
        "    subtotal = sum(prices)\n"
        "    return round(subtotal * discount, 2)\n"
    ),
    "test_pricing.py": (
        "import unittest\n"
        "\n"
        "from pricing import total\n"
        "\n\n"
        "class TotalTest(unittest.TestCase):\n"
        "    def test_no_discount(self):\n"
        "        self.assertEqual(total([10.0, 5.5]), 15.5)\n"
        "\n"
        "    def test_ten_percent_off(self):\n"
        "        self.assertEqual(total([20.0, 30.0], discount=0.1), 45.0)\n"
    ),
}
BUGGY_LINE: Final = "    return round(subtotal * discount, 2)"
FIXED_LINE: Final = "    return round(subtotal * (1 - discount), 2)"
LAST_TEST: Final = "        self.assertEqual(total([20.0, 30.0], discount=0.1), 45.0)\n"
NEW_TEST: Final = (
    "\n"
    "    def test_full_discount_is_free(self):\n"
    "        self.assertEqual(total([20.0, 30.0], discount=1.0), 0.0)\n"
)

#: What alice writes (``{mention}`` becomes a real mention of the bot).
MENTION: Final = (
    "{mention} the checkout tests fail since yesterday's discount change. "
    "Can you find the bug in `total()` and fix it?"
)
FOLLOW_UP: Final = "Thanks! Can you also add a test for a 100% discount, so this can't come back?"

#: The repository's tests, as alice's README says to run them (unittest is in every Python).
RUN_TESTS: Final = "python3 -m unittest 2>&1 | tail -n 12"
RUN_TESTS_VERBOSE: Final = "python3 -m unittest -v 2>&1 | tail -n 8"
#: unittest's last line when every test passed.
PASSED: Final = "\nOK"


def paced(reply: Reply, seconds: float) -> Reply:
    """``reply`` streamed over about ``seconds`` (a real model step takes seconds, not milliseconds).

    The scripted Claude spaces every streamed event by the same pause; a reply has about three events of
    its own, two per content block, and one per 20 characters of text or 24 of a tool's input.
    """
    if seconds <= 0:
        return reply
    events = 3
    for block in reply.content:
        size = len(block.text) / 20 if isinstance(block, Text) else len(json.dumps(block.input)) / 24
        events += 2 + math.ceil(size)
    return reply.paced(seconds / events)


def _passed(request: ReceivedRequest) -> bool:
    return PASSED in request.tool_results_text()


def _first_answer(request: ReceivedRequest) -> Reply:
    if not _passed(request):
        return Reply.text(
            "I changed `total()` in `pricing.py`, but the tests still fail; the output is above. "
            "Reply here and I'll keep looking."
        )
    return Reply.text(
        "Fixed the bug in `total()` (`pricing.py`): it multiplied the subtotal *by the discount* instead "
        "of by what is left after it, so no discount charged nothing and 10% off charged 10%.\n\n"
        "```\n"
        f"-{BUGGY_LINE}\n"
        f"+{FIXED_LINE}\n"
        "```\n\n"
        "Both tests pass now (`Ran 2 tests … OK`). The fix is on this thread's branch, in a draft pull "
        "request."
    )


def _second_answer(request: ReceivedRequest) -> Reply:
    if not _passed(request):
        return Reply.text("I added the test, but the tests fail now; the output is above.")
    return Reply.text(
        "Added `test_full_discount_is_free` to `test_pricing.py`: a 100% discount must cost 0.0, which "
        "would have caught yesterday's bug. All 3 tests pass. It is pushed to the same branch, so the "
        "pull request now has both commits."
    )


def first_turn(step_seconds: float = 0.0) -> list[Step]:
    """Claude's replies for the mention: test, read, fix, test again, answer (each over ``step_seconds``)."""
    replies: list[Reply] = [
        Reply.bash(RUN_TESTS, text="Let me run the tests first to see what fails."),
        Reply.view(
            "pricing.py", text="Both tests fail, and with no discount `total()` returns 0. Reading it:"
        ),
        Reply.str_replace(
            "pricing.py",
            BUGGY_LINE,
            FIXED_LINE,
            text="Found it: the subtotal is multiplied by the discount, not by `1 - discount`.",
        ),
        Reply.bash(RUN_TESTS_VERBOSE, text="Running the tests again."),
    ]
    return [
        *(paced(reply, step_seconds) for reply in replies),
        lambda request: paced(_first_answer(request), step_seconds),
    ]


def second_turn(step_seconds: float = 0.0) -> list[Step]:
    """Claude's replies for the follow-up: add a test, run the tests, answer (each over ``step_seconds``)."""
    replies: list[Reply] = [
        Reply.str_replace(
            "test_pricing.py",
            LAST_TEST,
            LAST_TEST + NEW_TEST,
            text="I'll add the test next to the other two.",
        ),
        Reply.bash(RUN_TESTS_VERBOSE, text="Running the tests."),
    ]
    return [
        *(paced(reply, step_seconds) for reply in replies),
        lambda request: paced(_second_answer(request), step_seconds),
    ]


# --- Checking that the follow-up continued the session ----------------------------------------------------


@dataclass(frozen=True)
class Continuity:
    """How Claude's first request of the follow-up turn relates to the first turn."""

    carried_messages: int
    """Messages of the first turn (its request, Claude's steps, the tool results, the answer) it repeats."""
    problems: tuple[str, ...]

    @property
    def continued(self) -> bool:
        return not self.problems


def _without_cache_control(value: Any) -> Any:
    """The content without ``cache_control`` marks (their place moves from request to request)."""
    if isinstance(value, dict):
        return {key: _without_cache_control(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(item) for item in value]
    return value


def continuity(first_turn: Sequence[RecordedRequest], follow_up: RecordedRequest) -> Continuity:
    """Check that ``follow_up`` (the first request of turn 2) carries all of turn 1 and then alice's reply.

    Turn 1's last request holds every message of the turn but Claude's final answer; the follow-up must
    repeat those messages in order, then the final answer, then a new user message quoting the reply.
    """
    if not first_turn:
        return Continuity(0, ("Claude got no request in the first turn",))
    before = _without_cache_control(first_turn[-1].messages)
    after = _without_cache_control(follow_up.messages)
    problems: list[str] = []
    if after[: len(before)] != before:
        problems.append("the follow-up's request does not start with the first turn's messages")
    answer = after[len(before)] if len(after) > len(before) else {}
    if answer.get("role") != "assistant" or "Fixed the bug" not in json.dumps(answer):
        problems.append("the first turn's answer is not in the follow-up's request")
    if FOLLOW_UP not in json.dumps(after[-1:]):
        problems.append("alice's reply is not the newest message of the follow-up's request")
    return Continuity(carried_messages=min(len(before) + 1, len(after)), problems=tuple(problems))
