"""Slack's message limits, measured the way Slack measures them, and a last-resort plain-text form.

Slack counts characters, not bytes; we count UTF-16 code units (what JavaScript's ``length`` gives and what
Block Kit Builder shows), which is never less than the number of code points, so a message that passes here
passes Slack whichever of the two Slack uses. ``&``, ``<`` and ``>`` are sent escaped (``&amp;`` ...) and the
limits apply to the text as sent, so a ``plain_text`` object (which we send unescaped; Slack escapes it)
is measured as if escaped, to be safe.

:func:`check_message` lists every limit a message breaks, with the same rules Slack enforces when it answers
``invalid_blocks``, ``msg_too_long``, ``msg_blocks_too_long`` or ``no_text``. The builders in this package
never produce a message it complains about; the Slack stand-in's tests can reuse it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from peerbot import constants

#: Slack answers ``msg_blocks_too_long`` when the blocks of one message hold too much text in total. The
#: limit is undocumented: Slack staff gave "12,000 text characters with a buffer for block containers"
#: (slackapi/bolt-js#2509), a divider was measured to cost about 125 characters, and one report
#: (slackapi/bolt-js#2867) was refused at 11,341 characters of text in four blocks. We count 11,000,
#: containers included: still three full 3,000-character sections a message.
SLACK_MAX_BLOCKS_TEXT: Final = 11_000
#: What each block costs against :data:`SLACK_MAX_BLOCKS_TEXT` besides its text (the container buffer).
BLOCK_CONTAINER_ALLOWANCE: Final = 125
#: A ``block_id`` is at most 255 characters and unique within a message.
SLACK_MAX_BLOCK_ID: Final = 255
#: Any text object (a context element, for one) is at most 3,000 characters.
SLACK_MAX_TEXT_OBJECT: Final = 3000
#: A section holds at most 10 fields of at most 2,000 characters each.
SLACK_MAX_SECTION_FIELDS: Final = 10
SLACK_MAX_FIELD_TEXT: Final = 2000
#: A button's ``url`` is at most 3,000 characters.
SLACK_MAX_BUTTON_URL: Final = 3000
#: A ``markdown`` block's text is at most 12,000 characters.
SLACK_MAX_MARKDOWN_BLOCK_TEXT: Final = 12_000
#: Block types Slack accepts in a message; anything else is ``invalid_blocks``.
MESSAGE_BLOCK_TYPES: Final = frozenset(
    {
        "actions",
        "context",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "video",
    }
)
BUTTON_STYLES: Final = frozenset({"primary", "danger"})

#: Shown instead of what :func:`plain_text_fallback` had to cut.
_CUT_NOTE = "\n… ({count:,} more characters cut to fit Slack's limit)"


def slack_length(text: str) -> int:
    """How long Slack considers ``text``: UTF-16 code units (an emoji outside the BMP counts two)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def char_length(char: str) -> int:
    """:func:`slack_length` of one character."""
    return 2 if ord(char) > 0xFFFF else 1


def escape(text: str) -> str:
    """Escape the three characters Slack treats as markup (``&``, ``<``, ``>``), and nothing else."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_to_mrkdwn(text: str) -> str:
    """Plain text made safe inside mrkdwn: escaped, and no two backticks side by side (a fence)."""
    return escape(text).replace("``", "`\u200b`").replace("``", "`\u200b`")


def unescape(text: str) -> str:
    """Undo :func:`escape`."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


#: Objects whose ``text`` counts against the blocks' total (rich text elements are of type ``text``).
_TEXT_TYPES: Final = frozenset({"plain_text", "mrkdwn", "markdown", "text"})


def text_object_length(obj: Mapping[str, Any]) -> int:
    """The length a text object counts for: as sent for ``mrkdwn``, escaped for ``plain_text``."""
    text = obj.get("text")
    if not isinstance(text, str):
        return 0
    return slack_length(escape(text) if obj.get("type") == "plain_text" else text)


def block_cost(block: Mapping[str, Any]) -> int:
    """What one block costs against :data:`SLACK_MAX_BLOCKS_TEXT`: its text plus the container allowance."""
    return BLOCK_CONTAINER_ALLOWANCE + _text_in(block)


def _text_in(value: Any) -> int:
    """The length of every text object's text found anywhere inside a block."""
    if isinstance(value, Mapping):
        total = 0
        if isinstance(value.get("text"), str) and value.get("type") in _TEXT_TYPES:
            total += text_object_length(value)
        for key, item in value.items():
            if key != "text" or not isinstance(item, str):
                total += _text_in(item)
        return total
    if isinstance(value, list):
        return sum(_text_in(item) for item in value)
    return 0


def check_message(message: Mapping[str, Any], *, require_fallback_text: bool = True) -> list[str]:
    """Every Slack limit ``message`` breaks, one sentence each; an empty list means Slack will accept it.

    ``require_fallback_text`` also asks for a non-empty top-level ``text`` when there are blocks: Slack
    accepts a message without it but then has nothing to show in notifications or read out to screen
    readers, so our builders always set it.
    """
    problems: list[str] = []
    text = message.get("text")
    blocks = message.get("blocks")
    if text is not None and not isinstance(text, str):
        problems.append(f"text must be a string, not {type(text).__name__}")
        text = None
    if blocks is not None and not isinstance(blocks, list):
        problems.append(f"blocks must be a list, not {type(blocks).__name__} (invalid_blocks_format)")
        blocks = None
    has_text = bool(text and text.strip())
    if not blocks and not has_text:
        problems.append("text is empty and there are no blocks: Slack rejects this with no_text")
    elif blocks and not has_text and require_fallback_text:
        problems.append("text is empty: set it as the fallback for notifications and screen readers")
    if text is not None and slack_length(text) > constants.SLACK_MAX_MESSAGE_TEXT:
        problems.append(
            f"text is {slack_length(text):,} characters; Slack allows {constants.SLACK_MAX_MESSAGE_TEXT:,} "
            "(msg_too_long): split the message"
        )
    if blocks:
        if len(blocks) > constants.SLACK_MAX_BLOCKS:
            problems.append(
                f"{len(blocks)} blocks; Slack allows {constants.SLACK_MAX_BLOCKS} in a message: "
                "split the message"
            )
        block_ids: set[str] = set()
        total = 0
        for index, block in enumerate(blocks):
            where = f"blocks[{index}]"
            if not isinstance(block, Mapping):
                problems.append(f"{where} must be an object")
                continue
            _check_block(block, where, problems, block_ids)
            total += block_cost(block)
        if total > SLACK_MAX_BLOCKS_TEXT:
            problems.append(
                f"the blocks hold {total:,} characters counting {BLOCK_CONTAINER_ALLOWANCE} per block; "
                f"Slack rejects more than about {SLACK_MAX_BLOCKS_TEXT:,} with msg_blocks_too_long: "
                "split the message"
            )
    return problems


def _check_block(block: Mapping[str, Any], where: str, problems: list[str], block_ids: set[str]) -> None:
    kind = block.get("type")
    block_id = block.get("block_id")
    if block_id is not None:
        if not isinstance(block_id, str) or not block_id or slack_length(block_id) > SLACK_MAX_BLOCK_ID:
            problems.append(f"{where}.block_id must be 1 to {SLACK_MAX_BLOCK_ID} characters")
        elif block_id in block_ids:
            problems.append(f"{where}.block_id {block_id!r} is used twice in the message")
        else:
            block_ids.add(block_id)
    if kind not in MESSAGE_BLOCK_TYPES:
        problems.append(f"{where}.type {kind!r} is not a block type Slack accepts in a message")
    elif kind == "section":
        _check_section(block, where, problems)
    elif kind == "header":
        _check_text(
            block.get("text"), f"{where}.text", constants.SLACK_MAX_HEADER_TEXT, problems, plain_only=True
        )
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"{where}.elements must hold at least one element")
            return
        if len(elements) > constants.SLACK_MAX_CONTEXT_ELEMENTS:
            problems.append(
                f"{where} has {len(elements)} elements; a context block holds "
                f"at most {constants.SLACK_MAX_CONTEXT_ELEMENTS}"
            )
        for index, element in enumerate(elements):
            if isinstance(element, Mapping) and element.get("type") == "image":
                continue
            _check_text(element, f"{where}.elements[{index}]", SLACK_MAX_TEXT_OBJECT, problems)
    elif kind == "actions":
        _check_actions(block, where, problems)
    elif kind == "markdown":
        text = block.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}.text must not be empty")
        elif slack_length(text) > SLACK_MAX_MARKDOWN_BLOCK_TEXT:
            problems.append(
                f"{where}.text is {slack_length(text):,} characters; "
                f"at most {SLACK_MAX_MARKDOWN_BLOCK_TEXT:,}"
            )


def _check_section(block: Mapping[str, Any], where: str, problems: list[str]) -> None:
    text = block.get("text")
    fields = block.get("fields")
    if text is None and not fields:
        problems.append(f"{where} needs text or fields")
    if text is not None:
        _check_text(text, f"{where}.text", constants.SLACK_MAX_SECTION_TEXT, problems)
    if fields is not None:
        if not isinstance(fields, list):
            problems.append(f"{where}.fields must be a list")
        else:
            if len(fields) > SLACK_MAX_SECTION_FIELDS:
                problems.append(f"{where} has {len(fields)} fields; at most {SLACK_MAX_SECTION_FIELDS}")
            for index, item in enumerate(fields):
                _check_text(item, f"{where}.fields[{index}]", SLACK_MAX_FIELD_TEXT, problems)
    accessory = block.get("accessory")
    if isinstance(accessory, Mapping) and accessory.get("type") == "button":
        _check_button(accessory, f"{where}.accessory", problems)


def _check_actions(block: Mapping[str, Any], where: str, problems: list[str]) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        problems.append(f"{where}.elements must hold at least one element")
        return
    if len(elements) > constants.SLACK_MAX_ACTION_ELEMENTS:
        problems.append(
            f"{where} has {len(elements)} elements; an actions block holds "
            f"at most {constants.SLACK_MAX_ACTION_ELEMENTS}"
        )
    action_ids: set[str] = set()
    for index, element in enumerate(elements):
        element_where = f"{where}.elements[{index}]"
        if not isinstance(element, Mapping):
            problems.append(f"{element_where} must be an object")
            continue
        if element.get("type") == "button":
            _check_button(element, element_where, problems)
        action_id = element.get("action_id")
        if isinstance(action_id, str):
            if action_id in action_ids:
                problems.append(f"{element_where}.action_id {action_id!r} is used twice in the block")
            action_ids.add(action_id)


def _check_button(button: Mapping[str, Any], where: str, problems: list[str]) -> None:
    _check_text(
        button.get("text"), f"{where}.text", constants.SLACK_MAX_BUTTON_TEXT, problems, plain_only=True
    )
    for key, limit in (
        ("action_id", constants.SLACK_MAX_ACTION_ID),
        ("value", constants.SLACK_MAX_BUTTON_VALUE),
        ("url", SLACK_MAX_BUTTON_URL),
    ):
        value = button.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            problems.append(f"{where}.{key} must be a non-empty string")
        elif slack_length(value) > limit:
            problems.append(f"{where}.{key} is {slack_length(value):,} characters; Slack allows {limit:,}")
    style = button.get("style")
    if style is not None and style not in BUTTON_STYLES:
        problems.append(f"{where}.style must be one of {sorted(BUTTON_STYLES)}, not {style!r}")


def _check_text(obj: Any, where: str, limit: int, problems: list[str], *, plain_only: bool = False) -> None:
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, Mapping) or obj.get("type") not in allowed:
        problems.append(f"{where} must be a text object of type {' or '.join(allowed)}")
        return
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append(f"{where}.text must not be empty")
        return
    length = text_object_length(obj)
    if length > limit:
        problems.append(f"{where}.text is {length:,} characters (escaped); Slack allows {limit:,}")


def visible_text(message: Mapping[str, Any]) -> str:
    """Everything a reader sees in ``message`` as mrkdwn: block texts in order, else the ``text``."""
    parts: list[str] = []
    blocks = message.get("blocks")
    if isinstance(blocks, Sequence):
        for block in blocks:
            if isinstance(block, Mapping):
                parts.extend(_block_texts(block))
    if not parts and isinstance(message.get("text"), str):
        parts.append(message["text"])
    return "\n\n".join(part for part in parts if part.strip())


def _block_texts(block: Mapping[str, Any]) -> list[str]:
    kind = block.get("type")
    texts: list[str] = []
    if kind == "markdown" and isinstance(block.get("text"), str):
        return [plain_to_mrkdwn(block["text"])]
    for key in ("text", "fields", "elements"):
        value = block.get(key)
        objects = value if isinstance(value, list) else [value]
        line: list[str] = []
        for obj in objects:
            if not isinstance(obj, Mapping):
                continue
            if obj.get("type") == "button":
                label = _as_mrkdwn(obj.get("text"))
                if label:
                    line.append(f"[{label}]")
            elif isinstance(obj.get("text"), str) and obj.get("type") in ("plain_text", "mrkdwn"):
                line.append(_as_mrkdwn(obj))
            elif kind == "rich_text":
                line.append(_rich_text(obj))
        joiner = "  ·  " if key == "elements" and kind in ("context", "actions") else "\n"
        if line:
            texts.append(joiner.join(item for item in line if item))
    if kind == "header" and texts:
        texts = [f"*{texts[0]}*"]
    return texts


def _as_mrkdwn(obj: Any) -> str:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("text"), str):
        return ""
    text: str = obj["text"]
    return plain_to_mrkdwn(text) if obj.get("type") == "plain_text" else text


def _rich_text(value: Any) -> str:
    if isinstance(value, Mapping):
        if isinstance(value.get("text"), str):
            return plain_to_mrkdwn(value["text"])
        if isinstance(value.get("url"), str):
            return plain_to_mrkdwn(value["url"])
        return "".join(_rich_text(item) for item in value.get("elements", []) or [])
    if isinstance(value, list):
        return "".join(_rich_text(item) for item in value)
    return ""


def clip(text: str, limit: int, *, note: str = _CUT_NOTE) -> str:
    """``text`` cut to ``limit`` Slack characters at a line or word boundary if one is near, with a note.

    Never cuts inside an escape (``&amp;``) and closes a code fence the cut left open.
    """
    if slack_length(text) <= limit:
        return text
    room = limit - slack_length(note.format(count=len(text))) - len("\n```")
    cut = 0
    used = 0
    for index, char in enumerate(text):
        used += char_length(char)
        if used > room:
            break
        cut = index + 1
    amp = text.rfind("&", max(0, cut - 5), cut)
    if amp != -1 and ";" not in text[amp:cut]:
        cut = amp
    for boundary in ("\n", " "):
        position = text.rfind(boundary, 0, cut)
        if position >= cut * 0.9:
            cut = position
            break
    if text.rfind("<", 0, cut) > text.rfind(">", 0, cut):
        cut = text.rfind("<", 0, cut)  # never leave half a link
    kept = text[:cut]
    if kept.count("```") % 2:
        kept += "\n```"
    return kept + note.format(count=len(text) - cut)


def plain_text_fallback(message: Mapping[str, Any]) -> dict[str, Any]:
    """``message`` as text only, within Slack's limits: what to send when Slack rejects its blocks.

    Used after ``invalid_blocks``, ``msg_too_long`` or ``msg_blocks_too_long`` so that nothing is lost:
    every block's text is kept in order (buttons become ``[Label]``), cut with a note only past Slack's
    40,000 characters. Other keys (``channel``, ``thread_ts``, ``ts``...) are kept as they were.
    """
    text = visible_text(message).strip() or "(empty message)"
    result = {key: value for key, value in message.items() if key not in ("blocks", "attachments", "text")}
    result["text"] = clip(text, constants.SLACK_MAX_MESSAGE_TEXT)
    return result
