"""Markdown, as Claude writes it, to Slack mrkdwn blocks that each fit Slack's limits.

:func:`markdown_to_blocks` parses headings, paragraphs, bullet and numbered lists, block quotes, fenced
code (any language; Slack shows no language), GFM tables (re-aligned inside a code block, which is the
only way Slack shows columns) and thematic breaks, and converts inline Markdown to mrkdwn: ``**b**`` to
``*b*``, ``*i*``/``_i_`` to ``_i_``, ``~~s~~`` to ``~s~``, ``[t](u)`` and ``![alt](u)`` to ``<u|t>``,
code spans kept. ``&``, ``<`` and ``>`` are escaped everywhere else, so the agent's text can neither ping
anyone (``<!channel>``) nor forge a link. Control characters are dropped.

The document becomes a tree (blocks, lines, words, tokens, characters); sections are filled greedily with
whole blocks and a block is only split when it cannot fit a section of its own, first at line, then at
word, then at character boundaries (never inside an escape, a link, or, when avoidable, a grapheme). A
code block split across sections is closed and reopened, so fences are balanced in every section, and
three backticks in the text itself are broken with a zero-width space so Slack never sees a stray fence.
Every block remembers where its content starts in the (cleaned) source, so a caller that stops after N
messages can hand the rest of the Markdown to the user as a file.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from peerbot import constants
from peerbot.slack.limits import char_length, escape, plain_to_mrkdwn, slack_length

FENCE = "```"
_OPEN = FENCE + "\n"
_CLOSE = "\n" + FENCE
#: What a code fence costs a section: the opening and the closing fence lines.
_FENCE_COST = len(_OPEN) + len(_CLOSE)
#: The largest unit never split further: whatever holds it, a section (fences included) stays in limits.
LEAF_MAX = constants.SLACK_MAX_SECTION_TEXT - _FENCE_COST
#: Inserted between backticks that would otherwise read as a code fence; invisible when shown.
ZERO_WIDTH_SPACE = "\u200b"
#: How far back a hard split looks for a grapheme boundary before cutting anyway.
_GRAPHEME_LOOKBACK = 16

_DROPPED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_FENCE_LINE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+|$)(.*?)(?:[ \t]+#+)?[ \t]*$")
_BREAK = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_TABLE_DELIMITER = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_QUOTE = re.compile(r"^ {0,3}(?:>[ \t]?)+")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+")
_NUMBERED = re.compile(r"^([ \t]*)(\d{1,9}[.)])[ \t]+")
_SPECIAL = re.compile(r"[\\`\[!<*_~ \t]")
# A URL with a backtick is not linked: Slack could read three of them as a code fence.
_AUTOLINK = re.compile(r"<((?:https?://|mailto:)[^\s<>|`]+)>")
_LINK_TARGET = re.compile(r"\(((?:https?://|mailto:)[^\s()<>|`]+)\)")
_ESCAPABLE = frozenset(string.punctuation)
#: Indentation (in spaces) of one nesting level of a Markdown list.
_LIST_INDENT = 2


def clean_markdown(text: str) -> str:
    """``text`` with Windows and old Mac line ends made ``\\n`` and control characters (but tab) dropped."""
    return _DROPPED.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


@dataclass(frozen=True)
class ContentBlock:
    """One block of converted content and where it starts in the cleaned source.

    ``reopen`` is what must precede ``source[start:]`` for the rest to read as the same Markdown (the
    opening fence when the block starts inside a code block).
    """

    kind: Literal["section", "header", "divider"]
    text: str
    start: int
    reopen: str = ""

    def to_block(self) -> dict[str, Any]:
        """The Block Kit block."""
        if self.kind == "section":
            return {"type": "section", "text": {"type": "mrkdwn", "text": self.text}}
        if self.kind == "header":
            return {"type": "header", "text": {"type": "plain_text", "text": self.text, "emoji": True}}
        return {"type": "divider"}

    def as_mrkdwn(self) -> str:
        """The block as mrkdwn text, for a message's ``text`` fallback."""
        if self.kind == "header":
            return f"*{plain_to_mrkdwn(self.text)}*"
        return self.text


@dataclass(frozen=True)
class Converted:
    """The cleaned source and the blocks it became, in order."""

    source: str
    blocks: list[ContentBlock]


def markdown_to_blocks(markdown: str) -> Converted:
    """Convert ``markdown`` to section, header and divider blocks, each within Slack's limits."""
    source = clean_markdown(markdown)
    packer = _Packer()
    for item in _parse(source):
        if isinstance(item, _Node):
            packer.add(item, "\n\n")
        else:
            packer.emit(item)
    packer.flush()
    blocks = packer.blocks
    while blocks and blocks[-1].kind == "divider":
        blocks.pop()
    return Converted(source, blocks)


# --- the tree -------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Node:
    """A leaf (``out`` set) or a group of children; ``sep`` goes before it when it follows a sibling."""

    start: int
    sep: str = ""
    out: str | None = None
    children: list[_Node] = field(default_factory=list)
    code: bool = False
    reopen: str = ""
    length: int = 0


def _leaf(out: str, start: int, sep: str = "") -> _Node:
    return _Node(start=start, sep=sep, out=out, length=slack_length(out))


def _group(children: list[_Node], sep: str = "", *, start: int | None = None) -> _Node:
    length = sum(child.length for child in children) + sum(slack_length(child.sep) for child in children[1:])
    return _Node(
        start=children[0].start if start is None else start, sep=sep, children=children, length=length
    )


def _code_group(children: list[_Node], start: int, reopen: str) -> _Node:
    node = _group(children, start=start)
    node.code = True
    node.reopen = reopen
    node.length += _FENCE_COST
    return node


def _render(node: _Node, parts: list[str]) -> None:
    if node.out is not None:
        parts.append(node.out)
        return
    if node.code:
        parts.append(_OPEN)
    for index, child in enumerate(node.children):
        if index:
            parts.append(child.sep)
        _render(child, parts)
    if node.code:
        parts.append(_CLOSE)


def _first_leaf(node: _Node) -> _Node:
    while node.out is None:
        node = node.children[0]
    return node


class _Packer:
    """Fills sections greedily with the largest whole units that fit, splitting only what cannot."""

    def __init__(self) -> None:
        self.limit = constants.SLACK_MAX_SECTION_TEXT
        self.blocks: list[ContentBlock] = []
        self._parts: list[str] = []
        self._length = 0
        self._start: int | None = None
        self._reopen = ""
        self._fresh = True  # nothing placed since the section (or its reopened code fence) began
        self._code: _Node | None = None  # the code block being split, while inside it
        self._code_mark = (0, 0)  # parts and length before that code block's opening fence

    def _closing(self) -> int:
        return len(_CLOSE) if self._code is not None else 0

    def add(self, node: _Node, sep: str) -> None:
        sep_length = 0 if self._fresh else slack_length(sep)
        if self._length + sep_length + node.length + self._closing() <= self.limit:
            self._put(node, sep)
            return
        alone = node.length + (_FENCE_COST if self._code is not None else 0)
        if node.out is not None or alone <= self.limit:
            self.flush()
            self._put(node, sep)
            return
        if node.code:
            self._open_code(node, sep)
            for child in node.children:
                self.add(child, child.sep)
            self._parts.append(_CLOSE)
            self._length += len(_CLOSE)
            self._code = None
            return
        for index, child in enumerate(node.children):
            self.add(child, sep if index == 0 else child.sep)

    def _open_code(self, node: _Node, sep: str) -> None:
        need = len(_OPEN) + _first_leaf(node).length + len(_CLOSE)
        if not self._fresh:
            need += slack_length(sep)
        if self._length + need > self.limit:
            self.flush()
        self._code_mark = (len(self._parts), self._length)
        if not self._fresh:
            self._parts.append(sep)
            self._length += slack_length(sep)
        if self._start is None:
            self._start, self._reopen = node.start, ""
        self._parts.append(_OPEN)
        self._length += len(_OPEN)
        self._code = node
        self._fresh = True

    def _put(self, node: _Node, sep: str) -> None:
        if not self._fresh:
            self._parts.append(sep)
            self._length += slack_length(sep)
        if self._start is None:
            self._start = node.start
        _render(node, self._parts)
        self._length += node.length
        self._fresh = False

    def flush(self) -> None:
        """End the current section; inside a code block, close its fence and reopen it in the next."""
        code = self._code
        if code is not None and self._fresh:
            # Only the opening fence was placed: move it, whole, to the next section.
            del self._parts[self._code_mark[0] :]
            self._length = self._code_mark[1]
            self._push()
            self._start, self._reopen = code.start, ""
        else:
            if code is not None:
                self._parts.append(_CLOSE)
            self._push()
            self._start, self._reopen = None, code.reopen if code is not None else ""
        if code is not None:
            self._parts, self._length = [_OPEN], len(_OPEN)

    def _push(self) -> None:
        text = "".join(self._parts)
        if text.strip() and self._start is not None:
            self.blocks.append(ContentBlock("section", text, self._start, self._reopen))
        self._parts, self._length, self._start, self._reopen = [], 0, None, ""
        self._fresh = True

    def emit(self, block: ContentBlock) -> None:
        """Add a header or divider block of its own (a divider only between two other blocks)."""
        self.flush()
        if block.kind == "divider" and (not self.blocks or self.blocks[-1].kind == "divider"):
            return
        self.blocks.append(block)


# --- block-level Markdown -------------------------------------------------------------------------------


def _parse(source: str) -> list[_Node | ContentBlock]:
    lines: list[tuple[str, int]] = []
    position = 0
    for line in source.split("\n"):
        lines.append((line, position))
        position += len(line) + 1
    items: list[_Node | ContentBlock] = []
    paragraph: list[_Node] = []

    def end_paragraph() -> None:
        if paragraph:
            items.append(_group(list(paragraph)))
            paragraph.clear()

    index = 0
    while index < len(lines):
        line, start = lines[index]
        fence = _FENCE_LINE.match(line)
        if fence and _is_fence(line):
            end_paragraph()
            index = _code_block(lines, index, fence, items)
            continue
        if not line.strip():
            end_paragraph()
        elif heading := _HEADING.match(line):
            end_paragraph()
            converted = _heading(len(heading.group(1)), heading.group(2), start + heading.start(2), start)
            if converted is not None:
                items.append(converted)
        elif _BREAK.match(line):
            end_paragraph()
            items.append(ContentBlock("divider", "", start))
        elif "|" in line and index + 1 < len(lines) and "|" in lines[index + 1][0]:
            if _TABLE_DELIMITER.match(lines[index + 1][0]):
                end_paragraph()
                index = _table(lines, index, items)
                continue
            paragraph.append(_text_line(line, start, "\n"))
        else:
            paragraph.append(_text_line(line, start, "\n"))
        index += 1
    end_paragraph()
    return items


def _is_fence(line: str) -> bool:
    """True for a line that opens a code fence (a backtick fence's info string has no backtick)."""
    fence = _FENCE_LINE.match(line)
    return fence is not None and not (fence.group(2)[0] == "`" and "`" in fence.group(3))


def _code_block(
    lines: list[tuple[str, int]], index: int, fence: re.Match[str], items: list[_Node | ContentBlock]
) -> int:
    indent, marker = len(fence.group(1)), fence.group(2)
    opening_line, opening_start = lines[index]
    children: list[_Node] = []
    index += 1
    while index < len(lines):
        line, start = lines[index]
        closing = _FENCE_CLOSE.match(line)
        if closing and closing.group(1)[0] == marker[0] and len(closing.group(1)) >= len(marker):
            index += 1
            break
        strip = min(indent, len(line) - len(line.lstrip(" ")))
        children.append(_code_line(line[strip:], start + strip, "\n"))
        index += 1
    if any(child.length for child in children):
        items.append(_code_group(children, opening_start, opening_line.lstrip(" ") + "\n"))
    return index


def _split_row(row: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", row.strip())
    if cells and not cells[0].strip():
        cells = cells[1:]
    if cells and not cells[-1].strip():
        cells = cells[:-1]
    return [cell.strip() for cell in cells]


def _table(lines: list[tuple[str, int]], index: int, items: list[_Node | ContentBlock]) -> int:
    """A GFM table, re-aligned in a code block: Slack has no tables and only code keeps columns."""
    rows: list[tuple[list[str], int]] = []
    first = index
    while index < len(lines) and "|" in lines[index][0] and lines[index][0].strip():
        if index > first + 1 and _is_fence(lines[index][0]):
            break
        rows.append((_split_row(lines[index][0]), lines[index][1]))
        index += 1
    alignments = [(cell.startswith(":"), cell.endswith(":")) for cell in rows[1][0]]
    columns = max(len(cells) for cells, _ in rows)
    widths = [3] * columns
    for row_index, (cells, _) in enumerate(rows):
        if row_index != 1:
            for column, cell in enumerate(cells):
                widths[column] = max(widths[column], len(cell))
    children: list[_Node] = []
    for row_index, (cells, start) in enumerate(rows):
        if row_index == 1:
            shown = []
            for column, width in enumerate(widths):
                left, right = alignments[column] if column < len(alignments) else (False, False)
                dashes = "-" * width
                shown.append((":" if left else "-") + dashes[1:-1] + (":" if right else "-"))
        else:
            shown = [
                (cells[column] if column < len(cells) else "").ljust(width)
                for column, width in enumerate(widths)
            ]
        children.append(_code_line("| " + " | ".join(shown) + " |", start, "\n"))
    items.append(_code_group(children, lines[first][1], ""))
    return index


def _heading(level: int, content: str, content_start: int, line_start: int) -> _Node | ContentBlock | None:
    """A level-1 or -2 heading becomes a header block when it can; any other a bold line."""
    tokens = _tokenize(content, content_start)
    if all(token.kind == "space" for token in tokens):
        return None
    plain = "".join(token.plain for token in tokens).strip()
    if (
        level <= 2
        and plain
        and not any(token.kind == "link" for token in tokens)
        and slack_length(escape(plain)) <= constants.SLACK_MAX_HEADER_TEXT
    ):
        return ContentBlock("header", plain, line_start)
    bold = "*" not in "".join(token.out for token in tokens)
    return _line_node(tokens, "*" if bold else "", line_start, "\n\n", bold_suffix=bold)


# --- lines and inline Markdown --------------------------------------------------------------------------


def _text_line(line: str, start: int, sep: str) -> _Node:
    prefix = ""
    offset = 0
    quote = _QUOTE.match(line)
    if quote:
        prefix, offset = ">", quote.end()
    rest = line[offset:]
    if bullet := _BULLET.match(rest):
        level = len(bullet.group(1).expandtabs(4)) // _LIST_INDENT
        prefix += (" " if prefix else "") + "    " * level + ("◦" if level else "•")
        offset += bullet.end()
    elif numbered := _NUMBERED.match(rest):
        level = len(numbered.group(1).expandtabs(4)) // _LIST_INDENT
        prefix += (" " if prefix else "") + "    " * level + numbered.group(2)
        offset += numbered.end()
    tokens = _tokenize(line[offset:], start + offset)
    return _line_node(tokens, prefix, start, sep)


def _line_node(
    tokens: list[_Token], prefix: str, start: int, sep: str, *, bold_suffix: bool = False
) -> _Node:
    children: list[_Node] = []
    if prefix:
        children.append(_leaf(prefix, start))
    word: list[_Token] = []
    glue = "" if bold_suffix else " "
    for token in [*tokens, None]:
        if token is None or token.kind == "space":
            if word:
                children.append(
                    _word(word, (glue if len(children) == 1 and prefix else " ") if children else "")
                )
            word = []
        else:
            word.append(token)
    if bold_suffix:
        children.append(_leaf("*", children[-1].start))
    return _group(children, sep, start=start)


def _word(tokens: list[_Token], sep: str) -> _Node:
    leaves: list[_Node] = []
    for token in tokens:
        if slack_length(token.out) <= LEAF_MAX:
            leaves.append(_leaf(token.out, token.start))
        else:
            leaves.extend(_split_token(token))
    if len(leaves) == 1:
        leaves[0].sep = sep
        return leaves[0]
    return _group(leaves, sep)


@dataclass(eq=False)
class _Token:
    kind: Literal["text", "space", "code", "link", "delimiter"]
    start: int
    source: str
    literal: str = ""  # text: the characters shown; code: the span's content; delimiter: the run
    out: str = ""
    plain: str = ""
    can_open: bool = False
    can_close: bool = False
    left: int = 0  # delimiter characters not (yet) used as markup
    opens: list[str] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)


def _is_punctuation(char: str) -> bool:
    return char in _ESCAPABLE or unicodedata.category(char).startswith("P")


def _tokenize(text: str, base: int, *, links: bool = True) -> list[_Token]:
    tokens: list[_Token] = []
    unmatched_runs: set[int] = set()  # backtick run lengths known to have no closing run further on
    index, end = 0, len(text)
    while index < end:
        char = text[index]
        if char in " \t":
            stop = index
            while stop < end and text[stop] in " \t":
                stop += 1
            tokens.append(_Token("space", base + index, text[index:stop]))
            index = stop
            continue
        if char == "\\" and index + 1 < end and text[index + 1] in _ESCAPABLE:
            tokens.append(_Token("text", base + index, text[index : index + 2], literal=text[index + 1]))
            index += 2
            continue
        if char == "`":
            stop = index
            while stop < end and text[stop] == "`":
                stop += 1
            closing = -1 if stop - index in unmatched_runs else _closing_run(text, stop, stop - index)
            if closing == -1:
                unmatched_runs.add(stop - index)
                tokens.append(_Token("text", base + index, text[index:stop], literal=text[index:stop]))
                index = stop
                continue
            content = text[stop:closing]
            if len(content) > 2 and content[0] == " " and content[-1] == " " and content.strip():
                content = content[1:-1]
            after = closing + stop - index
            if "`" in content or not content.strip():
                tokens.append(_Token("text", base + index, text[index:after], literal=text[index:after]))
            else:
                tokens.append(_Token("code", base + index, text[index:after], literal=content))
            index = after
            continue
        if links and char in "[!<":
            link = _link(text, index, base)
            if link is not None:
                tokens.append(link)
                index += len(link.source)
                continue
        if char in "*_~":
            stop = index
            while stop < end and text[stop] == char:
                stop += 1
            run = text[index:stop]
            if char == "~" and len(run) > 2:
                tokens.append(_Token("text", base + index, run, literal=run))
            else:
                tokens.append(
                    _delimiter(run, base + index, text[index - 1] if index else " ", text[stop : stop + 1])
                )
            index = stop
            continue
        special = _SPECIAL.search(text, index + 1)
        stop = special.start() if special else end
        tokens.append(_Token("text", base + index, text[index:stop], literal=text[index:stop]))
        index = stop
    _match_delimiters(tokens)
    _render_tokens(tokens)
    return tokens


def _closing_run(text: str, start: int, length: int) -> int:
    """Where the next run of exactly ``length`` backticks after ``start`` begins, or -1."""
    run = "`" * length
    while True:
        found = text.find(run, start)
        if found == -1:
            return -1
        stop = found
        while stop < len(text) and text[stop] == "`":
            stop += 1
        if stop - found == length:
            return found
        start = stop


def _delimiter(run: str, start: int, before: str, after: str) -> _Token:
    after = after or " "
    left_flanking = not after.isspace() and (
        not _is_punctuation(after) or before.isspace() or _is_punctuation(before)
    )
    right_flanking = not before.isspace() and (
        not _is_punctuation(before) or after.isspace() or _is_punctuation(after)
    )
    # Slack only formats a marker with no letter or digit outside it ("2*3*4" stays as written), for every
    # marker; Markdown's own rule for "_" is close to that.
    can_open = left_flanking and not before.isalnum()
    can_close = right_flanking and not after.isalnum()
    return _Token("delimiter", start, run, literal=run, can_open=can_open, can_close=can_close, left=len(run))


def _match_delimiters(tokens: list[_Token]) -> None:
    """Pair emphasis delimiters (a simplified CommonMark "process emphasis")."""
    openers: list[_Token] = []
    for token in tokens:
        if token.kind != "delimiter":
            continue
        char = token.literal[0]
        while token.can_close and token.left:
            opener = next(
                (
                    candidate
                    for candidate in reversed(openers)
                    if candidate.literal[0] == char and (char != "~" or candidate.left == token.left)
                ),
                None,
            )
            if opener is None:
                break
            if char == "~":
                used, marker = token.left, "~"
            else:
                used = 2 if opener.left >= 2 and token.left >= 2 else 1
                marker = "*" if used == 2 else "_"
            opener.left -= used
            token.left -= used
            opener.opens.append(marker)
            token.closes.append(marker)
            del openers[openers.index(opener) + (0 if opener.left == 0 else 1) :]
        if token.can_open and token.left:
            openers.append(token)


def _render_tokens(tokens: list[_Token]) -> None:
    """Each token's mrkdwn, never letting two backticks touch (Slack would see a code fence)."""
    last = ""
    for token in tokens:
        if token.kind == "space":
            token.out = token.plain = " "
        elif token.kind == "text":
            token.out = "".join(_text_outs(token.literal, last))
            token.plain = token.literal
        elif token.kind == "code":
            token.out = ("`" if last != "`" else ZERO_WIDTH_SPACE + "`") + escape(token.literal) + "`"
            token.plain = token.literal
        elif token.kind == "delimiter":
            literal = token.literal[0] * token.left
            token.out = "".join(token.closes) + literal + "".join(reversed(token.opens))
            token.plain = literal
        if token.out:
            last = token.out[-1]


def _link(text: str, index: int, base: int) -> _Token | None:
    """``[label](url)``, ``![alt](url)`` or ``<url>`` at ``index`` as a Slack link, if it is one."""
    if text[index] == "<":
        auto = _AUTOLINK.match(text, index)
        if auto is None:
            return None
        return _Token("link", base + index, auto.group(0), out=f"<{escape(auto.group(1))}>")
    label_start = index + (2 if text[index] == "!" else 1)
    if text[index] == "!" and text[index + 1 : index + 2] != "[":
        return None
    position = label_start
    while position < len(text) and text[position] != "]":
        if text[position] == "[":
            return None
        position += 2 if text[position] == "\\" else 1
    target = _LINK_TARGET.match(text, position + 1) if position < len(text) else None
    if target is None:
        return None
    label_tokens = _tokenize(text[label_start:position], base + label_start, links=False)
    label = "".join(token.out for token in label_tokens).strip()
    url = escape(target.group(1))
    out = f"<{url}|{label}>" if label else f"<{url}>"
    return _Token("link", base + index, text[index : target.end()], out=out)


def _text_outs(chars: str, last: str) -> list[str]:
    outs: list[str] = []
    for char in chars:
        out = escape(char)
        if char == "`" and last == "`":
            out = ZERO_WIDTH_SPACE + out
        outs.append(out)
        last = char
    return outs


def _code_outs(chars: str) -> list[str]:
    """Escaped code, with a zero-width space before any third backtick in a row (it would end the block)."""
    outs: list[str] = []
    run = 0
    for char in chars:
        out = escape(char)
        if char == "`":
            run += 1
            if run == 3:
                out, run = ZERO_WIDTH_SPACE + out, 1
        else:
            run = 0
        outs.append(out)
    return outs


def _code_line(line: str, start: int, sep: str) -> _Node:
    outs = _code_outs(line)
    out = "".join(outs)
    if slack_length(out) <= LEAF_MAX:
        return _leaf(out, start, sep)
    return _group(_chunk(outs, line, start, LEAF_MAX), sep)


def _split_token(token: _Token) -> list[_Node]:
    """Leaves of at most :data:`LEAF_MAX` for a token too long for one section."""
    if token.kind == "code":
        content_start = token.start + token.source.index(token.literal)
        outs = [escape(char) for char in token.literal]
        pieces = _chunk(outs, token.literal, content_start, LEAF_MAX - 3)
        return [
            _leaf(("" if index == 0 else ZERO_WIDTH_SPACE) + f"`{piece.out}`", piece.start)
            for index, piece in enumerate(pieces)
        ]
    if token.kind == "link":  # a link longer than a section is shown as the Markdown it was written as
        return _chunk(_text_outs(token.source, ""), token.source, token.start, LEAF_MAX)
    if token.kind == "delimiter":
        return _chunk(list(token.out), token.out, token.start, LEAF_MAX)
    outs = _text_outs(token.literal, "")
    if token.out.startswith(ZERO_WIDTH_SPACE):
        outs[0] = token.out[: len(outs[0]) + 1]
    return _chunk(outs, token.literal, token.start, LEAF_MAX)


def _joins_previous(chars: str, index: int) -> bool:
    """True when cutting before ``chars[index]`` would split a grapheme (an accent, a ZWJ emoji...)."""
    char = chars[index]
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or char == "\u200d"
        or chars[index - 1] == "\u200d"
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def _chunk(outs: Sequence[str], chars: str, start: int, limit: int) -> list[_Node]:
    """Consecutive leaves of at most ``limit``, cut between characters (and graphemes when possible)."""
    leaves: list[_Node] = []
    begin = 0
    used = 0
    index = 0
    while index < len(outs):
        size = sum(char_length(char) for char in outs[index])
        if used + size > limit and index > begin:
            cut = index
            for back in range(index, max(begin, index - _GRAPHEME_LOOKBACK), -1):
                if not _joins_previous(chars, back):
                    cut = back
                    break
            leaves.append(_leaf("".join(outs[begin:cut]), start + begin))
            begin, index, used = cut, cut, 0
            continue
        used += size
        index += 1
    if begin < len(outs):
        leaves.append(_leaf("".join(outs[begin:]), start + begin))
    return leaves
