"""Block Kit as Slack checks it, and as a person reads it.

:func:`validate_blocks` returns the problems Slack reports for a ``blocks`` argument, worded the way Slack
words them in ``response_metadata.messages`` (``must be less than 3001 characters
[json-pointer:/blocks/0/text/text]``; the ``[ERROR]`` prefix is added by the Web API layer). The wording was
checked against responses people recorded from the real API (``no more than 50 items allowed``,
``must be more than 0 characters``, ``unsupported type: sections``, ``missing required field: text``,
``failed to match all allowed schemas``); where Slack's exact sentence is unknown the closest recorded one
is used. Only structure Slack is known to enforce is enforced: unknown block types, missing required
fields, empty or over-long texts, and the documented size limits.

:func:`render_blocks` and :func:`render_mrkdwn` turn blocks and message text into what a person sees in
the Slack client, as plain text, for :meth:`SlackStandIn.render_thread` and the offline demo.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from peerbot import constants

# Limits the shared constants module does not hold, because only the stand-in needs them (all from
# https://docs.slack.dev/reference/block-kit/): they are checked so that a message the stand-in accepts is
# one Slack accepts too.
#: ``block_id`` on any block: at most 255 characters.
MAX_BLOCK_ID: Final = 255
#: A section's ``fields``: at most 10 text objects of at most 2,000 characters each.
MAX_SECTION_FIELDS: Final = 10
MAX_SECTION_FIELD_TEXT: Final = 2000
#: A ``markdown`` block's text: at most 12,000 characters.
MAX_MARKDOWN_BLOCK_TEXT: Final = 12000
#: URLs (button ``url``, ``image_url``): at most 3,000 characters.
MAX_URL: Final = 3000
#: An image's ``alt_text`` and ``title``; an input's ``label`` and ``hint``: at most 2,000 characters.
MAX_IMAGE_TEXT: Final = 2000
MAX_INPUT_LABEL: Final = 2000
#: A context block's text elements share the 3,000-character text object limit.
MAX_TEXT_OBJECT: Final = 3000

#: Block types Slack accepts in messages (https://docs.slack.dev/reference/block-kit/blocks).
BLOCK_TYPES: Final = frozenset(
    {
        "actions",
        "context",
        "context_actions",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    }
)
#: Interactive elements (https://docs.slack.dev/reference/block-kit/block-elements).
ELEMENT_TYPES: Final = frozenset(
    {
        "button",
        "channels_select",
        "checkboxes",
        "conversations_select",
        "datepicker",
        "datetimepicker",
        "email_text_input",
        "external_select",
        "feedback_buttons",
        "file_input",
        "icon_button",
        "multi_channels_select",
        "multi_conversations_select",
        "multi_external_select",
        "multi_static_select",
        "multi_users_select",
        "number_input",
        "overflow",
        "plain_text_input",
        "radio_buttons",
        "rich_text_input",
        "static_select",
        "timepicker",
        "url_text_input",
        "users_select",
        "workflow_button",
    }
)
_RICH_TEXT_PARTS: Final = frozenset(
    {"rich_text_section", "rich_text_list", "rich_text_preformatted", "rich_text_quote"}
)
_BUTTON_STYLES: Final = frozenset({"primary", "danger"})


def _ptr(at: str) -> str:
    return f"[json-pointer:{at}]"


class _Problems:
    """Collects Slack-worded problems, each naming where it is with a JSON pointer."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str, at: str) -> None:
        self.items.append(f"{message} {_ptr(at)}")

    def __len__(self) -> int:
        return len(self.items)


def validate_blocks(blocks: object, *, pointer: str = "/blocks") -> list[str]:
    """Return the problems Slack would report for ``blocks`` (an empty list when Slack accepts them).

    ``blocks`` is the already JSON-decoded value of the argument (a list of block objects).
    """
    problems = _Problems()
    if not isinstance(blocks, list):
        problems.add("must be an array", pointer)
        return problems.items
    if len(blocks) > constants.SLACK_MAX_BLOCKS:
        problems.add(f"no more than {constants.SLACK_MAX_BLOCKS} items allowed", pointer)
        return problems.items
    for index, block in enumerate(blocks):
        _block(block, f"{pointer}/{index}", problems)
    return problems.items


def _block(block: object, at: str, problems: _Problems) -> None:
    if not isinstance(block, dict):
        problems.add("failed to match all allowed schemas", at)
        return
    kind = block.get("type")
    if kind is None:
        problems.add("missing required field: type", at)
        return
    if not isinstance(kind, str) or kind not in BLOCK_TYPES:
        problems.add(f"unsupported type: {kind}", f"{at}/type")
        return
    block_id = block.get("block_id")
    if block_id is not None:
        _string(block_id, f"{at}/block_id", problems, max_len=MAX_BLOCK_ID)
    checker = _BLOCK_CHECKERS.get(kind)
    if checker is not None:
        checker(block, at, problems)


def _string(value: object, at: str, problems: _Problems, *, max_len: int, min_len: int = 0) -> bool:
    if not isinstance(value, str):
        problems.add("must be a string", at)
        return False
    if len(value) < min_len:
        problems.add(f"must be more than {min_len - 1} characters", at)
        return False
    if len(value) > max_len:
        problems.add(f"must be less than {max_len + 1} characters", at)
        return False
    return True


def _text_object(
    obj: object,
    at: str,
    problems: _Problems,
    *,
    max_len: int,
    plain_only: bool = False,
    union: bool = False,
) -> None:
    """Check a text object; ``union`` marks places where Slack accepts either plain_text or mrkdwn.

    Where Slack accepts a union it first says that none of the allowed schemas matched, then why (as
    recorded: ``failed to match all allowed schemas [json-pointer:/blocks/0/text]`` followed by
    ``must be less than 3001 characters [json-pointer:/blocks/0/text/text]``).
    """
    inner = _Problems()
    allowed = {"plain_text"} if plain_only else {"plain_text", "mrkdwn"}
    if not isinstance(obj, dict):
        inner.add("must be an object", at)
    else:
        kind = obj.get("type")
        if kind is None:
            inner.add("missing required field: type", at)
        elif kind not in allowed:
            inner.add(f"must be one of {', '.join(sorted(allowed))}", f"{at}/type")
        text = obj.get("text")
        if text is None:
            inner.add("missing required field: text", at)
        else:
            _string(text, f"{at}/text", inner, max_len=max_len, min_len=1)
    if inner.items:
        if union:
            problems.add("failed to match all allowed schemas", at)
        problems.items.extend(inner.items)


def _element(element: object, at: str, problems: _Problems, *, allow_image: bool = False) -> None:
    if not isinstance(element, dict):
        problems.add("failed to match all allowed schemas", at)
        return
    kind = element.get("type")
    if kind is None:
        problems.add("missing required field: type", at)
        return
    if kind == "image" and allow_image:
        _image_element(element, at, problems)
        return
    if not isinstance(kind, str) or kind not in ELEMENT_TYPES:
        problems.add(f"unsupported type: {kind}", f"{at}/type")
        return
    action_id = element.get("action_id")
    if action_id is not None:
        _string(action_id, f"{at}/action_id", problems, max_len=constants.SLACK_MAX_ACTION_ID, min_len=1)
    if kind == "button":
        _button(element, at, problems)


def _button(button: Mapping[str, Any], at: str, problems: _Problems) -> None:
    if "text" not in button:
        problems.add("missing required field: text", at)
    else:
        _text_object(
            button["text"], f"{at}/text", problems, max_len=constants.SLACK_MAX_BUTTON_TEXT, plain_only=True
        )
    if "value" in button:
        _string(button["value"], f"{at}/value", problems, max_len=constants.SLACK_MAX_BUTTON_VALUE, min_len=1)
    if "url" in button:
        _string(button["url"], f"{at}/url", problems, max_len=MAX_URL, min_len=1)
    style = button.get("style")
    if style is not None and style not in _BUTTON_STYLES:
        problems.add("must be one of danger, primary", f"{at}/style")


def _image_element(image: Mapping[str, Any], at: str, problems: _Problems) -> None:
    if "image_url" not in image and "slack_file" not in image:
        problems.add("missing required field: image_url", at)
    elif "image_url" in image:
        _string(image["image_url"], f"{at}/image_url", problems, max_len=MAX_URL, min_len=1)
    if "alt_text" not in image:
        problems.add("missing required field: alt_text", at)
    else:
        _string(image["alt_text"], f"{at}/alt_text", problems, max_len=MAX_IMAGE_TEXT, min_len=1)


def _elements(block: Mapping[str, Any], at: str, problems: _Problems, *, limit: int) -> list[Any] | None:
    elements = block.get("elements")
    if elements is None:
        problems.add("missing required field: elements", at)
        return None
    if not isinstance(elements, list):
        problems.add("must be an array", f"{at}/elements")
        return None
    if not elements:
        problems.add("must provide at least 1 items", f"{at}/elements")
        return None
    if len(elements) > limit:
        problems.add(f"no more than {limit} items allowed", f"{at}/elements")
        return None
    return elements


def _section(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    if "text" not in block and "fields" not in block:
        problems.add("must define either `text` or `fields`", f"{at}/type")
    if "text" in block:
        _text_object(
            block["text"], f"{at}/text", problems, max_len=constants.SLACK_MAX_SECTION_TEXT, union=True
        )
    if "fields" in block:
        fields = block["fields"]
        if not isinstance(fields, list):
            problems.add("must be an array", f"{at}/fields")
        elif len(fields) > MAX_SECTION_FIELDS:
            problems.add(f"no more than {MAX_SECTION_FIELDS} items allowed", f"{at}/fields")
        else:
            for index, field in enumerate(fields):
                _text_object(
                    field, f"{at}/fields/{index}", problems, max_len=MAX_SECTION_FIELD_TEXT, union=True
                )
    if "accessory" in block:
        _element(block["accessory"], f"{at}/accessory", problems, allow_image=True)


def _header(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    if "text" not in block:
        problems.add("missing required field: text", at)
        return
    _text_object(
        block["text"], f"{at}/text", problems, max_len=constants.SLACK_MAX_HEADER_TEXT, plain_only=True
    )


def _context(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    elements = _elements(block, at, problems, limit=constants.SLACK_MAX_CONTEXT_ELEMENTS)
    for index, element in enumerate(elements or []):
        where = f"{at}/elements/{index}"
        if isinstance(element, dict) and element.get("type") == "image":
            _image_element(element, where, problems)
        else:
            _text_object(element, where, problems, max_len=MAX_TEXT_OBJECT, union=True)


def _actions(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    elements = _elements(block, at, problems, limit=constants.SLACK_MAX_ACTION_ELEMENTS)
    for index, element in enumerate(elements or []):
        _element(element, f"{at}/elements/{index}", problems)


def _image(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    _image_element(block, at, problems)
    if "title" in block:
        _text_object(block["title"], f"{at}/title", problems, max_len=MAX_IMAGE_TEXT, plain_only=True)


def _markdown(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    if "text" not in block:
        problems.add("missing required field: text", at)
        return
    _string(block["text"], f"{at}/text", problems, max_len=MAX_MARKDOWN_BLOCK_TEXT, min_len=1)


def _rich_text(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    elements = block.get("elements")
    if elements is None:
        problems.add("missing required field: elements", at)
        return
    if not isinstance(elements, list):
        problems.add("must be an array", f"{at}/elements")
        return
    for index, part in enumerate(elements):
        where = f"{at}/elements/{index}"
        if not isinstance(part, dict):
            problems.add("failed to match all allowed schemas", where)
        elif part.get("type") not in _RICH_TEXT_PARTS:
            problems.add(f"unsupported type: {part.get('type')}", f"{where}/type")
        elif not isinstance(part.get("elements"), list):
            problems.add("missing required field: elements", where)


def _input(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
    if "label" not in block:
        problems.add("missing required field: label", at)
    else:
        _text_object(block["label"], f"{at}/label", problems, max_len=MAX_INPUT_LABEL, plain_only=True)
    if "element" not in block:
        problems.add("missing required field: element", at)
    else:
        _element(block["element"], f"{at}/element", problems)


def _required(*names: str) -> Callable[[Mapping[str, Any], str, _Problems], None]:
    def check(block: Mapping[str, Any], at: str, problems: _Problems) -> None:
        for name in names:
            if name not in block:
                problems.add(f"missing required field: {name}", at)

    return check


_BLOCK_CHECKERS: Final[dict[str, Callable[[Mapping[str, Any], str, _Problems], None]]] = {
    "section": _section,
    "header": _header,
    "context": _context,
    "actions": _actions,
    "image": _image,
    "markdown": _markdown,
    "rich_text": _rich_text,
    "input": _input,
    "file": _required("external_id", "source"),
    "video": _required("alt_text", "title", "thumbnail_url", "video_url"),
    "table": _required("rows"),
}

# --- What a person sees ---------------------------------------------------------------------------------

_ANGLE = re.compile(r"<([^<>]+)>")


def render_mrkdwn(text: str, names: Callable[[str], str | None] | None = None) -> str:
    """Turn Slack's message markup into what a person reads: ``<@U1>`` becomes ``@alice``, links their label.

    ``names`` maps a user or channel id to its name (``None`` when unknown, and the id is shown instead).
    """
    lookup = names or (lambda _id: None)

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "@" + (label or lookup(target[1:]) or target[1:])
        if target.startswith("#"):
            return "#" + (label or lookup(target[1:]) or target[1:])
        if target.startswith("!"):
            special = target[1:].split("^")[0]
            return label or ("@" + special if special in {"here", "channel", "everyone"} else special)
        return label or target

    return html.unescape(_ANGLE.sub(replace, text))


def _text_of(obj: object, names: Callable[[str], str | None] | None) -> str:
    if isinstance(obj, dict):
        text = obj.get("text", "")
        if not isinstance(text, str):
            return ""
        return render_mrkdwn(text, names) if obj.get("type") == "mrkdwn" else text
    return ""


def _rich_text_of(part: Mapping[str, Any], names: Callable[[str], str | None] | None) -> str:
    pieces: list[str] = []
    for item in part.get("elements") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in _RICH_TEXT_PARTS:
            prefix = "• " if part.get("type") == "rich_text_list" else ""
            pieces.append(prefix + _rich_text_of(item, names))
            pieces.append("\n")
        elif kind == "text" or kind == "link":
            pieces.append(str(item.get("text") or item.get("url") or ""))
        elif kind == "user":
            user = str(item.get("user_id", ""))
            pieces.append("@" + ((names(user) if names else None) or user))
        elif kind == "channel":
            channel = str(item.get("channel_id", ""))
            pieces.append("#" + ((names(channel) if names else None) or channel))
        elif kind == "emoji":
            pieces.append(f":{item.get('name', '')}:")
        elif kind == "broadcast":
            pieces.append(f"@{item.get('range', '')}")
    text = "".join(pieces).rstrip("\n")
    if part.get("type") == "rich_text_preformatted":
        return f"```{text}```"
    if part.get("type") == "rich_text_quote":
        return "> " + text
    return text


def render_blocks(blocks: Sequence[Any], names: Callable[[str], str | None] | None = None) -> str:
    """Render blocks as plain text, one line (or paragraph) per block, the way the Slack client shows them."""
    lines: list[str] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "section":
            parts = [_text_of(block.get("text"), names)] if "text" in block else []
            parts += [_text_of(field, names) for field in block.get("fields") or []]
            accessory = block.get("accessory")
            if isinstance(accessory, dict) and accessory.get("type") == "button":
                parts.append(f"[{_text_of(accessory.get('text'), names)}]")
            lines.append("\n".join(part for part in parts if part))
        elif kind == "header":
            lines.append(_text_of(block.get("text"), names))
        elif kind == "divider":
            lines.append("---")
        elif kind == "context":
            lines.append(
                " ".join(
                    _text_of(element, names)
                    if element.get("type") != "image"
                    else f"[image: {element.get('alt_text', '')}]"
                    for element in block.get("elements") or []
                    if isinstance(element, dict)
                )
            )
        elif kind == "actions":
            labels = []
            for element in block.get("elements") or []:
                if isinstance(element, dict):
                    label = _text_of(element.get("text") or element.get("placeholder"), names)
                    labels.append(f"[{label or element.get('type', '')}]")
            lines.append(" ".join(labels))
        elif kind == "image":
            lines.append(f"[image: {block.get('alt_text', '')}]")
        elif kind == "markdown":
            lines.append(str(block.get("text", "")))
        elif kind == "rich_text":
            lines.append(
                "\n".join(
                    _rich_text_of(part, names)
                    for part in block.get("elements") or []
                    if isinstance(part, dict)
                )
            )
        elif kind == "input":
            lines.append(f"{_text_of(block.get('label'), names)}: [input]")
        elif kind == "file":
            lines.append("[file]")
        else:
            lines.append(f"[{kind}]")
    return "\n".join(lines)
