"""Slack message building: Markdown to mrkdwn, splitting within limits, the other builders, the checker.

The property tests state what must hold for *any* agent output:

- every message passes ``check_message`` (and slack_sdk's own block validation);
- code fences are balanced in every section and every message's ``text``;
- nothing is lost: the visible content of all messages followed by the reported overflow holds every
  non-whitespace character of the input, in order. "Visible" undoes only what the conversion is allowed
  to change: markup characters (``* _ ~ ` # > | [ ] ( ) - + ! \\``, bullets, the zero-width space that
  breaks accidental fences) are ignored on both sides, Slack links ``<url|label>`` read as
  ``label url`` (the order ``[label](url)`` had), entities are unescaped, control characters are dropped
  from the input, and so is a code fence's info string (Slack shows no language).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block

from peerbot import constants
from peerbot.slack_messages import (
    ACTION_CONTINUE,
    ACTION_STOP,
    SLACK_MAX_BLOCKS_TEXT,
    AnswerFooter,
    Link,
    RenderedAnswer,
    StatusView,
    answer_messages,
    button,
    check_message,
    error_message,
    escape,
    footer_blocks,
    help_message,
    markdown_to_blocks,
    paused_message,
    plain_text_fallback,
    slack_length,
    status_message,
    unescape,
)

ZWSP = "\u200b"
MARKUP = frozenset("*_~`#<>|[]()-+!\\•◦" + ZWSP)
FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
SLACK_LINK = re.compile(r"<([^<>|]*)\|([^<>]*)>")
SLACK_BARE_LINK = re.compile(r"<([^<>|]*)>")


# --- helpers --------------------------------------------------------------------------------------------


def clean(markdown: str) -> str:
    """The input as the converter sees it: line ends made \\n, control characters (but tab) dropped."""
    markdown = markdown.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in markdown if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))


def info_string_positions(source: str) -> set[int]:
    """Positions of code-fence info strings (```python): dropped on purpose, Slack shows no language."""
    hidden: set[int] = set()
    fence: str | None = None
    position = 0
    for line in source.split("\n"):
        if fence is None:
            opening = FENCE_OPEN.match(line)
            if opening and not (opening.group(2)[0] == "`" and "`" in opening.group(3)):
                fence = opening.group(2)
                hidden.update(range(position + opening.start(3), position + len(line)))
        else:
            closing = FENCE_CLOSE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = None
        position += len(line) + 1
    return hidden


def squeeze(text: str) -> str:
    return "".join(c for c in text if not c.isspace() and c not in MARKUP)


def source_content(source: str, start: int = 0) -> str:
    hidden = info_string_positions(source)
    return squeeze("".join(c for i, c in enumerate(source) if i >= start and i not in hidden))


def mrkdwn_content(text: str) -> str:
    text = SLACK_LINK.sub(lambda m: m.group(2) + m.group(1), text)
    text = SLACK_BARE_LINK.sub(lambda m: m.group(1), text)
    return squeeze(unescape(text))


def shown_content(messages: list[dict[str, Any]]) -> str:
    """What the answer's content blocks (sections and headers; not labels, notices or footers) show."""
    parts = []
    for message in messages:
        for block in message["blocks"]:
            if block["type"] == "section":
                parts.append(mrkdwn_content(block["text"]["text"]))
            elif block["type"] == "header":
                parts.append(squeeze(block["text"]["text"]))
    return "".join(parts)


def section_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for m in messages for b in m["blocks"] if b["type"] == "section"]


def assert_valid(message: dict[str, Any]) -> None:
    assert check_message(message) == []
    for block in message.get("blocks", []):
        parsed = Block.parse(block)  # slack_sdk's own checks, independent of ours
        assert parsed is not None
        parsed.validate_json()


def assert_answer_properties(markdown: str, result: RenderedAnswer, max_messages: int = 10) -> None:
    assert 1 <= len(result.messages) <= max_messages
    for message in result.messages:
        assert_valid(message)
        assert message["text"].count("```") % 2 == 0, message["text"]
        for block in message["blocks"]:
            if block["type"] == "section":
                assert block["text"]["text"].count("```") % 2 == 0
    source = clean(markdown)
    if result.truncated:
        start = len(source) - result.overflow_characters
        assert 0 <= start < len(source)
        assert result.overflow.endswith(source[start:])
        assert re.fullmatch(
            r"(?:[`~]{3,}.*\n)?", result.overflow[: len(result.overflow) - len(source) + start]
        )
        notice = f"✂️ Output truncated: {result.overflow_characters:,} more characters"
        assert any(
            notice in b["elements"][0]["text"]
            for b in result.messages[-1]["blocks"]
            if b["type"] == "context"
        )
    else:
        start = len(source)
        assert result.overflow == ""
        assert result.overflow_characters == 0
    assert shown_content(result.messages) + source_content(source, start) == source_content(source)
    # The text fallback alone carries the same content.
    for message in result.messages:
        assert shown_content([message]) in mrkdwn_content(message["text"])


def only_message(markdown: str) -> dict[str, Any]:
    result = answer_messages(markdown)
    assert len(result.messages) == 1
    assert_answer_properties(markdown, result)
    return result.messages[0]


def only_section(markdown: str) -> str:
    blocks = only_message(markdown)["blocks"]
    assert [b["type"] for b in blocks] == ["section"]
    text: str = blocks[0]["text"]["text"]
    return text


# --- inline conversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "_*both*_"),
        ("~~gone~~ and ~gone~", "~gone~ and ~gone~"),
        ("snake_case_name and 2*3*4 stay", "snake_case_name and 2*3*4 stay"),
        ("a ** b ** c and * not *", "a ** b ** c and * not *"),
        ("`code **not bold** & <x>`", "`code **not bold** &amp; &lt;x&gt;`"),
        ("``a ` b``", "`\u200b`a ` b`\u200b`"),
        ("\\*literal\\* stars", "*literal* stars"),
        ("Tom & Jerry <3 > 2", "Tom &amp; Jerry &lt;3 &gt; 2"),
        ("<!channel> <@U123> ping", "&lt;!channel&gt; &lt;@U123&gt; ping"),
    ],
)
def test_inline_markup_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert only_section(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("see [the docs](https://example.com/a?b=1&c=2)", "see <https://example.com/a?b=1&amp;c=2|the docs>"),
        ("![a chart](https://example.com/c.png)", "<https://example.com/c.png|a chart>"),
        ("<https://example.com> and <mailto:a@b.c>", "<https://example.com> and <mailto:a@b.c>"),
        ("[**bold** label](https://e.com)", "<https://e.com|*bold* label>"),
        ("[](https://e.com)", "<https://e.com>"),
        ("[relative](src/app.py) stays", "[relative](src/app.py) stays"),
        ("[evil](javascript:alert(1))", "[evil](javascript:alert(1))"),
        ("bare https://example.com?a=1&b=2", "bare https://example.com?a=1&amp;b=2"),
    ],
)
def test_links(markdown: str, mrkdwn: str) -> None:
    assert only_section(markdown) == mrkdwn


# --- block-level conversion -----------------------------------------------------------------------------


def test_top_headings_become_header_blocks_and_others_bold_lines() -> None:
    message = only_message("# Summary & *plan*\n\n### Details with `code`\n\ntext")
    assert message["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Summary & plan", "emoji": True},
    }
    assert message["blocks"][1]["text"]["text"] == "*Details with `code`*\n\ntext"
    assert message["text"].startswith("*Summary &amp; plan*")


def test_headings_that_cannot_be_headers_stay_in_sections() -> None:
    long_heading = "# " + "word " * 40
    with_link = "## See [docs](https://e.com)"
    message = only_message(f"{long_heading}\n\n{with_link}")
    assert [b["type"] for b in message["blocks"]] == ["section"]
    assert message["blocks"][0]["text"]["text"].startswith("*word word")
    assert "*See <https://e.com|docs>*" in message["blocks"][0]["text"]["text"]


def test_lists_and_quotes() -> None:
    markdown = "- one\n  - nested\n* two\n1. first\n2) second\n> quoted **text**\n>> nested quote"
    assert only_section(markdown) == (
        "• one\n    ◦ nested\n• two\n1. first\n2) second\n> quoted *text*\n> nested quote"
    )


def test_fenced_code_is_kept_verbatim_without_language() -> None:
    markdown = "Before:\n\n```python\nif a < b and c & d:\n    print('**not bold**')\n```\n\nAfter."
    assert only_section(markdown) == (
        "Before:\n\n```\nif a &lt; b and c &amp; d:\n    print('**not bold**')\n```\n\nAfter."
    )


def test_backticks_inside_code_cannot_end_the_block() -> None:
    markdown = "~~~markdown\nuse ``` to open a block\n````\n~~~"
    text = only_section(markdown)
    assert text.count("```") == 2
    assert text.startswith("```\n")
    assert text.endswith("\n```")
    assert text.replace(ZWSP, "") == "```\nuse ``` to open a block\n````\n```"


def test_stray_backticks_in_text_cannot_open_a_block() -> None:
    text = only_section("oops ``` this is not a fence and ``x`` ` `")
    assert "```" not in text


def test_unclosed_fence_runs_to_the_end() -> None:
    assert only_section("```\ncode & more") == "```\ncode &amp; more\n```"


def test_table_becomes_aligned_code() -> None:
    markdown = "| Name | Count |\n|:-----|------:|\n| apples | 3 |\n| kiwis & figs | 12 |"
    assert only_section(markdown) == (
        "```\n"
        "| Name         | Count |\n"
        "| :----------- | ----: |\n"
        "| apples       | 3     |\n"
        "| kiwis &amp; figs | 12    |\n"
        "```"
    )


def test_dividers_collapse_and_never_start_or_end_a_message() -> None:
    message = only_message("---\n\na\n\n---\n***\n___\n\nb\n\n---")
    assert [b["type"] for b in message["blocks"]] == ["section", "divider", "section"]


def test_control_characters_and_line_ends() -> None:
    assert only_section("a\x00b\x1bc\r\nd\re\x7f") == "abc\nd\ne"


def test_paragraphs_are_joined_into_few_sections() -> None:
    message = only_message("\n\n".join(f"para {i}" for i in range(200)))
    assert len(message["blocks"]) == 1


# --- splitting ------------------------------------------------------------------------------------------


def test_long_answers_split_between_paragraphs() -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 150 for i in range(30)]
    markdown = "\n\n".join(paragraphs)
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    for text in section_texts(result.messages):
        assert text.startswith("Paragraph ")
        assert text.endswith("word")
        assert all(part.startswith("Paragraph ") for part in text.split("\n\n"))


def test_long_paragraphs_split_between_lines_then_words() -> None:
    lines = "\n".join(f"line {i} " + "x" * 90 for i in range(100))
    words = " ".join(f"w{i}" for i in range(3000))
    for markdown, unit in ((lines, "\n"), (words, " ")):
        result = answer_messages(markdown)
        assert_answer_properties(markdown, result)
        original = set(markdown.split(unit))
        for text in section_texts(result.messages):
            assert set(text.split(unit)) <= original  # no line (or word) was cut in two


def test_huge_code_block_is_closed_and_reopened() -> None:
    markdown = "```sh\n" + "".join(f"echo {i} && echo <done>\n" for i in range(2000)) + "```"
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    texts = section_texts(result.messages)
    assert len(texts) > 3
    for text in texts:
        assert text.startswith("```\necho ")
        assert text.endswith("\n```")
        assert slack_length(text) <= constants.SLACK_MAX_SECTION_TEXT


def test_one_enormous_word_is_cut_anywhere_but_inside_an_escape() -> None:
    markdown = "&<>x" * 5000
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    for text in section_texts(result.messages):
        assert re.fullmatch(r"(?:&amp;|&lt;|&gt;|x)+", text)


def test_escaping_counts_against_the_limit() -> None:
    markdown = "&" * 2000  # 2,000 characters, 10,000 once escaped
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    assert len(section_texts(result.messages)) == 4


def test_emoji_count_double_and_graphemes_stay_whole() -> None:
    coder = "👩\u200d💻"  # woman + ZWJ + laptop: one grapheme, five UTF-16 units
    markdown = (coder + "e\u0301") * 2000
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    texts = section_texts(result.messages)
    assert len(texts) >= 5
    for text in texts:
        assert slack_length(text) <= constants.SLACK_MAX_SECTION_TEXT
        assert text.startswith(coder)
        assert text.endswith("e\u0301")


def test_many_blocks_spill_into_numbered_messages() -> None:
    markdown = "\n\n".join(f"# Heading {i}\n\nBody {i}\n\n---" for i in range(60))
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    count = len(result.messages)
    assert count > 1
    assert not result.truncated
    for number, message in enumerate(result.messages, start=1):
        assert message["blocks"][0] == {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"({number}/{count})"}],
        }
        assert message["text"].startswith(f"({number}/{count})\n")
        assert len(message["blocks"]) <= constants.SLACK_MAX_BLOCKS
        assert message["blocks"][-1]["type"] == "section"  # a heading goes with what it heads


def test_past_the_cap_the_rest_is_reported_as_overflow() -> None:
    markdown = "\n\n".join(f"Paragraph {i}. " + "lorem ipsum " * 100 for i in range(200))
    result = answer_messages(markdown, max_messages=3, overflow_location="the pull request")
    assert_answer_properties(markdown, result, max_messages=3)
    assert result.truncated
    assert len(result.messages) == 3
    assert result.overflow.startswith("Paragraph ")
    assert result.overflow_characters == len(result.overflow)
    notice = result.messages[-1]["blocks"][-1]["elements"][0]["text"]
    assert (
        notice == f"✂️ Output truncated: {len(result.overflow):,} more characters; "
        "the full output is in the pull request."
    )
    assert notice in result.messages[-1]["text"]
    assert result.messages[0]["text"].startswith("(1/3)\n")


def test_overflow_inside_a_code_block_reopens_the_fence() -> None:
    markdown = "```python\n" + "x = 1\n" * 20_000 + "```\n\nThe end."
    result = answer_messages(markdown, max_messages=2)
    assert_answer_properties(markdown, result, max_messages=2)
    assert result.overflow.startswith("```python\nx = 1\n")
    assert result.overflow.endswith("```\n\nThe end.")


def test_footer_goes_under_the_last_message_only() -> None:
    footer = AnswerFooter(input_tokens=12_345, output_tokens=2_100)
    markdown = "\n\n".join("word " * 500 for _ in range(10))
    result = answer_messages(markdown, footer=footer)
    assert_answer_properties(markdown, result)
    assert len(result.messages) > 1
    assert result.messages[-1]["blocks"][-1] == footer_blocks(footer)[0]
    assert all(footer_blocks(footer)[0] not in m["blocks"] for m in result.messages[:-1])


@pytest.mark.parametrize("markdown", ["", "   \n\n", "---", "#", "```\n\n```"])
def test_an_empty_answer_still_makes_a_valid_message(markdown: str) -> None:
    result = answer_messages(markdown)
    assert_answer_properties(markdown, result)
    assert result.messages[0]["text"] == "The answer had no text."


def test_max_messages_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_messages must be at least 1"):
        answer_messages("x", max_messages=0)


def test_markdown_to_blocks_records_where_each_block_starts() -> None:
    converted = markdown_to_blocks("# Title\n\nfirst\n\n---\n\nsecond")
    assert [(b.kind, converted.source[b.start :][:6]) for b in converted.blocks] == [
        ("header", "# Titl"),
        ("section", "first\n"),
        ("divider", "---\n\ns"),
        ("section", "second"),
    ]


# --- property tests -------------------------------------------------------------------------------------

MARKDOWN_PIECES = [
    "# ",
    "## ",
    "### ",
    "\n",
    "\n\n",
    "- ",
    "  - ",
    "1. ",
    "> ",
    "```",
    "```python\n",
    "\n```\n",
    "~~~",
    "`",
    "**",
    "*",
    "_",
    "__",
    "~~",
    "[",
    "](https://e.com/x?a=1&b=2)",
    "](rel)",
    "<https://e.com>",
    "<",
    ">",
    "&",
    "|",
    "| a | b |\n|---|:-:|\n",
    "---\n",
    "\\",
    "!",
    "(",
    ")",
    " ",
    "\t",
    "😀",
    "👩\u200d💻",
    "e\u0301",
    "日本語",
    "\x00",
    "\x1b",
    "\r\n",
    "\u2028",
    "word",
    "x" * 40,
    "&amp;",
]
text_alphabet = st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("`*_~#>|[]()<>&\n ")
fragments = st.one_of(st.sampled_from(MARKDOWN_PIECES), st.text(text_alphabet, max_size=30))
markdownish = st.lists(fragments, max_size=200).map("".join)


def _to_size(unit: str, size: int) -> str:
    """``unit`` repeated to exactly ``size`` characters (hypothesis alone rarely makes long text)."""
    return (unit * (size // max(1, len(unit)) + 1))[:size] if unit else ""


sizes = st.integers(3_000, 100_000)
big_inputs = st.one_of(
    # up to 100,000 characters of ordinary Markdown
    st.builds(_to_size, markdownish, sizes),
    # one enormous line with no spaces
    st.builds(
        _to_size, st.text(st.characters(exclude_categories=["Cs", "Zs", "Cc"]), min_size=1, max_size=5), sizes
    ),
    # huge code blocks, with any language and any line
    st.builds(
        lambda lang, line, size: f"```{lang}\n" + _to_size(line.replace("\n", " ") + "\n", size) + "```\n",
        st.sampled_from(["", "python", "sh"]),
        st.text(text_alphabet, max_size=120),
        sizes,
    ),
    # lots of tiny paragraphs, headings and dividers (far more than 50 blocks)
    st.builds(_to_size, st.sampled_from(["a\n\n", "# h\n\nb\n\n", "---\n\nc\n\n", "## x\n", "- i\n"]), sizes),
    # many escapes: the text grows fivefold when escaped
    st.builds(_to_size, st.sampled_from(["&", "<>", "a & b ", "&amp;", "<https://e.com/&>"]), sizes),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(markdownish, st.builds(_to_size, markdownish, st.integers(0, 5_000))))
def test_any_markdown_gives_valid_complete_messages(markdown: str) -> None:
    assert_answer_properties(markdown, answer_messages(markdown))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(big_inputs, st.integers(1, 10))
def test_huge_outputs_give_valid_complete_messages(markdown: str, max_messages: int) -> None:
    result = answer_messages(markdown, max_messages=max_messages, footer=AnswerFooter(1, 2, cost_usd=0.5))
    assert_answer_properties(markdown, result, max_messages=max_messages)


# --- the other messages ---------------------------------------------------------------------------------


def test_status_message() -> None:
    steps = [f"Edited file_{i}.py" for i in range(10)]
    view = StatusView("Running", steps, "Running the tests <pytest>", 65, 235, "t1-c1-1700000000-1")
    message = status_message(view)
    assert_valid(message)
    headline, checklist, actions = message["blocks"]
    assert headline["text"]["text"] == "⚙️ *Working*  ·  1m 05s elapsed  ·  3m 55s left"
    assert checklist["text"]["text"].splitlines() == [
        "✓ _…and 4 earlier steps_",
        *(f"✓ Edited file_{i}.py" for i in range(4, 10)),
        "▸ *Running the tests &lt;pytest&gt;*",
    ]
    stop = actions["elements"][0]
    assert (stop["action_id"], stop["value"], stop["style"]) == (ACTION_STOP, "t1-c1-1700000000-1", "danger")
    assert message["text"] == "⚙️ Working: Running the tests &lt;pytest&gt; (1m 05s elapsed)"


def test_status_message_without_stop_button_and_with_huge_steps() -> None:
    view = StatusView("Queued", ["x" * 10_000] * 500, "y\n" * 5000, 0)
    message = status_message(view)
    assert_valid(message)
    assert [b["type"] for b in message["blocks"]] == ["section", "section"]


def test_footer() -> None:
    footer = AnswerFooter(
        input_tokens=1_200,
        output_tokens=300,
        cache_read_tokens=5_000,
        cache_write_tokens=100,
        cost_usd=0.1234,
        duration_seconds=95,
        branch=Link("peerbot/c1-1", "https://github.com/o/r/tree/peerbot/c1-1"),
        pull_request=Link("#3 Fix the bug", "https://github.com/o/r/pull/3"),
    )
    (block,) = footer_blocks(footer)
    assert [e["text"] for e in block["elements"]] == [
        "🔢 6.3k in · 300 out",  # every prompt token, cached or not
        "♻️ 79% from cache",
        "💵 ~$0.12",
        "⏱️ 1m 35s",
        "🌿 <https://github.com/o/r/tree/peerbot/c1-1|peerbot/c1-1>",
        "🔀 <https://github.com/o/r/pull/3|#3 Fix the bug>",
    ]
    unsafe = footer_blocks(AnswerFooter(branch=Link("b<r>", "javascript:x|y")))[0]["elements"][-1]["text"]
    assert unsafe == "🌿 b&lt;r&gt;"


def test_paused_message() -> None:
    message = paused_message(
        conversation="conv-1", limit_minutes=5, branch=Link("peerbot/x", "https://g.com/b")
    )
    assert_valid(message)
    body, actions = message["blocks"]
    assert "5-minute time limit" in body["text"]["text"]
    assert "<https://g.com/b|peerbot/x>" in body["text"]["text"]
    cont = actions["elements"][0]
    assert (cont["action_id"], cont["value"], cont["style"]) == (ACTION_CONTINUE, "conv-1", "primary")
    assert "Continue" in message["text"]


def test_error_message() -> None:
    detail = "Traceback:\n  ```\n" + "x & y\n" * 2000
    message = error_message(
        "I could not push to GitHub.", "Check the token's `repo` scope, then retry.", detail=detail
    )
    assert_valid(message)
    summary, code = message["blocks"]
    assert summary["text"]["text"] == (
        "❌ *I could not push to GitHub.*\n*What to do:* Check the token's `repo` scope, then retry."
    )
    assert code["text"]["text"].startswith("```\nTraceback:")
    assert code["text"]["text"].count("```") == 2
    assert "more characters" in code["text"]["text"]
    assert message["text"].startswith("❌ I could not push to GitHub. What to do:")


def test_help_message() -> None:
    message = help_message(trigger_phrase="@peerbotai", timeout_minutes=7, organization="acme")
    assert_valid(message)
    text = message["blocks"][1]["text"]["text"]
    assert "@peerbotai" in text
    assert "7 minutes" in text
    assert "_acme_" in text


def test_buttons_refuse_values_slack_would_reject() -> None:
    with pytest.raises(ValueError, match="conversation name"):
        button("Stop", ACTION_STOP, "x" * (constants.SLACK_MAX_BUTTON_VALUE + 1))
    with pytest.raises(ValueError, match="action_id"):
        button("Stop", "a" * (constants.SLACK_MAX_ACTION_ID + 1), "conv")


@settings(max_examples=100, deadline=None)
@given(
    st.text(text_alphabet, max_size=3000),
    st.lists(st.text(text_alphabet, max_size=500), max_size=30),
    st.floats(0, 1e6),
    st.text(st.sampled_from("abc-0123"), min_size=1, max_size=52),
)
def test_other_builders_stay_valid_for_any_input(
    text: str, steps: list[str], seconds: float, conversation: str
) -> None:
    assert_valid(status_message(StatusView(text or "Running", steps, text, seconds, seconds, conversation)))
    assert_valid(error_message(text or "x", text or "y", detail=text))
    assert_valid(paused_message(conversation=conversation, limit_minutes=5, branch=Link(text, text)))
    footer = AnswerFooter(1, 2, 3, 4, seconds, seconds, Link(text, text), Link(text, "https://e.com/" + text))
    assert_valid({"text": "x", "blocks": footer_blocks(footer)})


# --- the checker ----------------------------------------------------------------------------------------


def section_block(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def stop_button(**changes: Any) -> dict[str, Any]:
    return {**button("Stop", ACTION_STOP, "conv"), **changes}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def blocks(*items: dict[str, Any]) -> dict[str, Any]:
    return {"text": "x", "blocks": list(items)}


def actions(*elements: dict[str, Any]) -> dict[str, Any]:
    return blocks({"type": "actions", "elements": list(elements)})


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        ({"text": ""}, "no_text"),
        ({"blocks": [section_block("x")]}, "text is empty"),
        ({"text": "x" * 40_001}, "msg_too_long"),
        ({"text": "😀" * 20_001}, "msg_too_long"),  # 20,001 emoji are 40,002 UTF-16 units
        (blocks(*[{"type": "divider"}] * 51), "51 blocks"),
        (blocks(section_block("x" * 3001)), "Slack allows 3,000"),
        (blocks(section_block("&amp;" * 601)), "Slack allows 3,000"),
        (blocks(section_block("   ")), "must not be empty"),
        (blocks(*[section_block("x" * 3000)] * 4), "msg_blocks_too_long"),
        # 31 ampersands are 155 characters once escaped
        (blocks({"type": "header", "text": {"type": "plain_text", "text": "&" * 31}}), "Slack allows 150"),
        (blocks({"type": "header", "text": mrkdwn("h")}), "plain_text"),
        (blocks({"type": "context", "elements": [mrkdwn("a")] * 11}), "at most 10"),
        (blocks({"type": "context", "elements": []}), "at least one"),
        (actions(stop_button(value="v" * 2001)), "value"),
        (actions(stop_button(action_id="a" * 256)), "action_id"),
        (actions(stop_button(text={"type": "plain_text", "text": "s" * 76})), "Slack allows 75"),
        (actions(stop_button(), stop_button()), "used twice"),
        (actions(stop_button(style="red")), "style"),
        (actions(*[stop_button()] * 26), "at most 25"),
        (blocks({"type": "bogus"}), "not a block type"),
        (
            blocks({**section_block("a"), "block_id": "b"}, {**section_block("b"), "block_id": "b"}),
            "used twice",
        ),
        (blocks({"type": "section"}), "needs text or fields"),
        (blocks({"type": "section", "fields": [mrkdwn("a")] * 11}), "11 fields"),
        ({"text": "x", "blocks": "[]"}, "invalid_blocks_format"),
    ],
)
def test_check_message_reports_each_violation(message: dict[str, Any], complaint: str) -> None:
    problems = check_message(message)
    assert any(complaint in problem for problem in problems), problems


def test_check_message_accepts_messages_at_the_limits() -> None:
    assert check_message({"text": "x" * 40_000}) == []
    blocks = [section_block("x" * 3000)] * 3 + [{"type": "divider"}] * 20
    assert sum(len(b.get("text", {}).get("text", "")) for b in blocks) < SLACK_MAX_BLOCKS_TEXT
    assert check_message({"text": "x", "blocks": blocks[:3] + [{"type": "divider"}] * 5}) == []
    assert check_message({"text": "x", "blocks": [{"type": "divider"}] * 50}) == []
    assert check_message({"blocks": [section_block("x")]}, require_fallback_text=False) == []


# --- plain-text fallback --------------------------------------------------------------------------------


def test_plain_text_fallback_keeps_every_block_text() -> None:
    message = {
        "channel": "C1",
        "thread_ts": "1.2",
        "text": "short",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Title & more"}},
            section_block("body &amp; *bold*"),
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "a"}, {"type": "mrkdwn", "text": "b"}],
            },
            {"type": "actions", "elements": [button("Stop", ACTION_STOP, "conv")]},
        ],
    }
    fallback = plain_text_fallback(message)
    assert fallback == {
        "channel": "C1",
        "thread_ts": "1.2",
        "text": "*Title &amp; more*\n\nbody &amp; *bold*\n\na  ·  b\n\n[Stop]",
    }
    assert check_message(fallback) == []


def test_plain_text_fallback_of_a_huge_message_is_cut_with_a_note() -> None:
    message = {"text": "x", "blocks": [section_block("```\n" + "a &amp; b\n" * 290 + "```")] * 20}
    fallback = plain_text_fallback(message)
    assert check_message(fallback) == []
    assert fallback["text"].count("```") % 2 == 0
    assert re.search(r"… \([\d,]+ more characters cut to fit Slack's limit\)$", fallback["text"])
    assert not re.search(r"&[a-z]{0,3}\n…", fallback["text"])  # no half escape left at the cut


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markdownish)
def test_plain_text_fallback_of_any_answer_is_valid(markdown: str) -> None:
    for message in answer_messages(markdown * 20).messages:
        fallback = plain_text_fallback(message)
        assert check_message(fallback) == []
        assert mrkdwn_content(fallback["text"]).startswith(shown_content([message])[:1000])


def test_escape_round_trip() -> None:
    assert escape("a & <b> &amp;") == "a &amp; &lt;b&gt; &amp;amp;"
    assert unescape(escape("a & <b> &amp;")) == "a & <b> &amp;"
    assert slack_length("a😀") == 3
