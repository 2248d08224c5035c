"""Markdown for MLflow descriptions: renders the same on every page and links nowhere but the user's own servers.

MLflow's UI renders run and version descriptions with showdown's GitHub flavour, which turns ``@word`` into a
link to github.com/word: an alias is written as a code span (``alias``), and free text that may hold one
(a registry reason) goes through ``no_mentions``. Its tables get no cell padding (columns run together), so
tables go in as fixed-width text in a code block (``table``). Registry lists show a description's first line
raw and cut short, so a description starts with a plain line (``plain``). Numbers are shown to a few
significant digits (``num``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.tables import format_rows

MENTION = re.compile(r"(?<![\w`@/])@(?=\w)([\w.-]*\w)")  # what showdown's ghMentions would link
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
DIGITS = 4  # significant digits of every number a description or a summary metric shows


def alias(name: str) -> str:
    """A registry alias as a code span: ```@champion``` (a bare ``@champion`` would link to GitHub)."""
    return f"`@{name}`"


def no_mentions(text: str) -> str:
    """``text`` with every ``@word`` outside code spans put in one, so none becomes a link to GitHub."""
    out, at = [], 0
    for span in CODE_SPAN.finditer(text):
        out += [MENTION.sub(r"`@\1`", text[at:span.start()]), span.group(0)]
        at = span.end()
    return "".join(out + [MENTION.sub(r"`@\1`", text[at:])])


def plain(text: str) -> str:
    """``text`` without markdown markup, for a first line that lists show raw."""
    return re.sub(r"[*_`]", "", text)


def num(value: float | None, digits: int = DIGITS) -> str:
    """A number to ``digits`` significant digits (``-`` for None)."""
    return "-" if value is None else f"{value:.{digits}g}"


def rounded(value: float, digits: int = DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (what a summary metric stores and shows)."""
    return float(f"{value:.{digits}g}")


def link(text: str, url: str) -> str:
    """``[text](url)`` with brackets in ``text`` escaped."""
    return f"[{text.replace('[', '(').replace(']', ')')}]({url})"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Header and rows as aligned fixed-width text in a code block (MLflow's tables render without padding)."""
    return "```\n" + "\n".join(format_rows([list(r) for r in rows])) + "\n```"


def external_links(text: str, allowed: Sequence[str]) -> list[str]:
    """Link targets (markdown links, images, bare URLs) in ``text`` that start with none of ``allowed``."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"(?<![(\w])(https?://[^\s)>\]]+)", text)
    return [t for t in targets if not t.startswith(tuple(allowed)) and not t.startswith(("#", "get-artifact"))]


def mentions(text: str) -> list[str]:
    """``@word`` outside code spans: what showdown would render as a link to github.com/word."""
    return MENTION.findall(CODE_SPAN.sub("", text))
