"""Every number a report prints comes from the stored data (``crosspatch report --check``).

The check re-reads ``report.md`` and ``report.html``, finds every number they print as a number
(not the digits of a name, a path, a token, a prompt id or a plot's coordinates), and looks it up
among the renderings of the numbers stored in ``summary.json`` and ``config.json`` (each numeric
value rounded the ways the reports round: 0 to 3 decimals, signed or not, as a percent, with
thousands separators, three significant digits). A printed number that no stored value renders
to is reported: a report can never say what the data does not.
"""

from __future__ import annotations

import html as html_lib
import math
import re
from pathlib import Path

# a number standing alone: not glued to a word, a path or another number (t_IT, L0, top-1, p7, 3.5x)
_NUMBER = re.compile(r"(?<![\w.\-/#@])[+\-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w.]*\w)(?:%)?")
_CODE_SPAN = re.compile(r"`[^`]*`")
_HTML_DROP = re.compile(r"<(svg|script|style|code|pre|title|select|button)\b.*?</\1>", re.S | re.I)  # not data: controls
_TAG = re.compile(r"<[^>]+>")
# numbers of the method's own vocabulary that a report names rather than measures
VOCABULARY = {"2", "95%", "1", "4", "2x2", "0"}


def _numeric_leaves(obj, out: list[float]) -> None:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _numeric_leaves(v, out)
            if isinstance(k, str) and re.fullmatch(r"[+\-]?\d+(\.\d+)?", k):  # boundaries, ranks, k used as keys
                out.append(float(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _numeric_leaves(v, out)
    elif isinstance(obj, str):  # numbers inside stored text (model names, thresholds written as text)
        out.extend(float(m.replace(",", "")) for m in re.findall(r"\d[\d,]*(?:\.\d+)?", obj)
                   if m.replace(",", "").replace(".", "", 1).isdigit())


def renderings(value: float) -> set[str]:
    """The texts a report may print for ``value`` (unsigned; the sign is compared separately)."""
    v = abs(value)
    out = {f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{v:.3g}", f"{v:g}", f"{v:,.0f}", f"{v:,.1f}",
           f"{100 * v:.0f}%", f"{100 * v:.1f}%", f"{v:.0f}%", f"{v:.1f}%"}
    if float(v).is_integer():
        out |= {str(int(v)), f"{int(v):,}"}
    return out


def allowed_numbers(summary: dict, config: dict, records=()) -> set[str]:
    """Renderings of every number stored in the summary, the config and the 2x2 records (with each
    record's per-event effects, which the event explorer prints)."""
    values: list[float] = []
    _numeric_leaves(summary, values)
    _numeric_leaves(config, values)
    for r in records:
        _numeric_leaves([r.cells, r.margin_pt, r.margin_it, r.position, r.boundary, r.t_pt, r.t_it, r.prompt_len,
                         r.prefix_len, r.prompt_id, r.category or ""], values)
        # model text the explorer shows (tokens, prompts, continuations): data, whatever digits it holds
        _numeric_leaves([r.t_pt_text, r.t_it_text, r.prompt_text or "", r.continuation_text or ""], values)
        for readout in r.cells:
            _numeric_leaves(r.effects(readout), values)
    allowed = set(VOCABULARY)
    for v in values:
        allowed |= renderings(v)
        # differences a report prints between two stored bounds are not numbers of their own
    return allowed


def printed_numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text)]


def _markdown_text(md: str) -> str:
    return _CODE_SPAN.sub(" ", md.replace("\\", ""))


def _html_text(page: str) -> str:
    page = _HTML_DROP.sub(" ", page)
    page = re.sub(r'<table class="explorer".*?</table>', " ", page, flags=re.S)  # model text, ids
    return html_lib.unescape(_TAG.sub(" ", page))


def check_report(run_dir: str | Path) -> list[str]:
    """The numbers ``report.md`` and ``report.html`` print that no stored value renders to, as
    ``"report.md: 1.23"`` lines (empty: every number is backed by the data)."""
    run_dir = Path(run_dir)
    from ..store import RunStore

    store = RunStore(run_dir)
    allowed = allowed_numbers(store.summary(), store.config(), store.load_records())
    problems = []
    for name, extract in (("report.md", _markdown_text), ("report.html", _html_text)):
        path = run_dir / name
        if not path.exists():
            continue
        for number in printed_numbers(extract(path.read_text(encoding="utf-8"))):
            bare = number.lstrip("+-−")
            if bare not in allowed:
                problems.append(f"{name}: {number}")
    return sorted(set(problems))
