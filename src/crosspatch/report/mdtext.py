"""Text helpers shared by the reports, the plug-in sections and the console: escaping of model
text and of generated prose, tables, control characters shown as symbols, and the Jinja
environment of every HTML page."""

from __future__ import annotations

import re

# the control characters of text crosspatch shows (tab and newline aside): in a prompt id, a token
# or a path, an ANSI escape would recolour or clear a terminal that shows it, a carriage return
# overwrite the line
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible_controls(text: str) -> str:
    """``text`` with each control character shown as a symbol of one cell (Unicode's control
    pictures, ``\\x1b`` as ␛; DEL as ␡; the C1 controls as �), never passed on as a command."""
    return CONTROL.sub(lambda m: chr(0x2400 + ord(m.group())) if m.group() < " " else "\u2421" if m.group() == "\x7f"
                       else "\ufffd", text)


def page_environment():
    """The Jinja environment of every HTML page crosspatch writes: its templates, every value
    HTML-escaped, and every text value's control characters shown as symbols
    (:func:`visible_controls`; markup a page builds itself, ``Markup``, as it is)."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    def shown(value):
        return visible_controls(value) if isinstance(value, str) and not isinstance(value, Markup) else value

    from ..core.records import readout_label

    environment = Environment(loader=PackageLoader("crosspatch.report", "templates"),
                              autoescape=select_autoescape(["j2"]), finalize=shown)
    environment.filters["readout_label"] = readout_label
    return environment


def md_escape(text: str) -> str:
    """Model text is data: escape Markdown/HTML-significant characters, show whitespace and
    control characters."""
    text = str(text).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    for ch in "|`*_[]<>#":
        text = text.replace(ch, "\\" + ch)
    return visible_controls(text)


def md_escape_prose(text: str) -> str:
    """Escape what could become markup in generated prose, and only that, so the raw Markdown
    stays readable: ``|`*<>`` and backslashes always; ``_`` only where it could open or close
    emphasis (not inside a word such as ``t_IT``, which CommonMark never emphasises); ``[`` only
    where ``](``, ``][`` or ``]:`` follows (a link); ``#`` only at the start of the text (a
    heading); control characters shown as symbols."""
    text = str(text).replace("\\", "\\\\")
    for ch in "|`*<>":
        text = text.replace(ch, "\\" + ch)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    text = re.sub(r"\[(?=[^\]]*\][(\[:])", r"\\[", text)
    return visible_controls(re.sub(r"^(\s*)#", r"\1\\#", text))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out
