"""Markdown text helpers shared by the reports and the plug-in sections: escaping of model text
and of generated prose, and tables."""

from __future__ import annotations

import re


def md_escape(text: str) -> str:
    """Model text is data: escape Markdown/HTML-significant characters and show whitespace."""
    text = str(text).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    for ch in "|`*_[]<>#":
        text = text.replace(ch, "\\" + ch)
    return text


def md_escape_prose(text: str) -> str:
    """Escape what could become markup in generated prose, and only that, so the raw Markdown
    stays readable: ``|`*<>`` and backslashes always; ``_`` only where it could open or close
    emphasis (not inside a word such as ``t_IT``, which CommonMark never emphasises); ``[`` only
    where ``](``, ``][`` or ``]:`` follows (a link); ``#`` only at the start of the text (a heading)."""
    text = str(text).replace("\\", "\\\\")
    for ch in "|`*<>":
        text = text.replace(ch, "\\" + ch)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    text = re.sub(r"\[(?=[^\]]*\][(\[:])", r"\\[", text)
    return re.sub(r"^(\s*)#", r"\1\\#", text)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out
