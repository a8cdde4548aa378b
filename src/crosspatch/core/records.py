"""The records of a run as plain data, importable without torch: event keys, divergence events
and no-divergence outcomes, the four cells and the one effect formula, and the 2x2 record of an
event at a boundary. ``crosspatch gate``, ``pool`` and ``report`` read runs through this module
alone; :mod:`crosspatch.core.cells` and :mod:`crosspatch.core.divergence` re-export these names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

# event kind -> key suffix (first divergence keeps the short "first")
KEY_SUFFIX = {"first_diff": "first", "first_nonformat_diff": "nonformat", "first_assistant_marker_diff": "assistant"}


def event_key(prompt_id: str, kind: str = "first_diff") -> str:
    """The record key of a prompt's event of ``kind`` (``<id>#first`` for the first divergence)."""
    return f"{prompt_id}#{KEY_SUFFIX.get(kind, kind)}"


_SUFFIX_KIND = {v: k for k, v in KEY_SUFFIX.items()}
_RECORD_KEY = re.compile(r"^(?P<event>.*)@(?P<boundary>-?\d+)(?:#(?P<role>[^#@]*))?$")


@dataclass(frozen=True)
class RecordKey:
    """The key of a stored record, typed: ``str()`` gives the stored form
    ``<prompt_id>#<kind suffix>[@<boundary>][#<role>]`` (``p7#first@16``, ``p7#first@16#sft``) and
    :meth:`parse` reads it back (prompt ids may hold ``#`` and ``@``: the fields are read from the
    right)."""

    prompt_id: str
    kind: str = "first_diff"
    boundary: int | None = None
    role: str | None = None

    def __str__(self) -> str:
        text = event_key(self.prompt_id, self.kind)
        if self.boundary is not None:
            text += f"@{self.boundary}"
            if self.role is not None:
                text += f"#{self.role}"
        return text

    @property
    def event(self) -> str:
        """The event's key, without boundary and role."""
        return event_key(self.prompt_id, self.kind)

    @classmethod
    def parse(cls, text: str) -> "RecordKey":
        m = _RECORD_KEY.match(text)
        event, boundary, role = (m["event"], int(m["boundary"]), m["role"]) if m else (text, None, None)
        prompt_id, _, suffix = event.rpartition("#")
        if not _:
            raise ValueError(f"not a record key: {text!r}")
        return cls(prompt_id, _SUFFIX_KIND.get(suffix, suffix), boundary, role)


@dataclass
class DivergenceEvent:
    """A generated position where PT's and IT's greedy top-1 tokens differ on a shared history:
    by default the first (``kind`` ``first_diff``); other kinds and controls score other
    positions the same way."""

    prompt_id: str
    category: str | None
    prompt_len: int
    position: int  # generated position i (0 = first token after the prompt)
    prefix_ids: list[int]  # prompt + the i generated tokens of the history before the event
    t_pt: int
    t_it: int
    kind: str = "first_diff"

    @property
    def key(self) -> str:
        return event_key(self.prompt_id, self.kind)

    def to_record(self) -> dict:
        """The record as stored (:func:`copied_fields`)."""
        return copied_fields(self)


NO_DIVERGENCE_REASONS = ("agreed_eos", "budget_exhausted", "non_finite_logits")


@dataclass
class NoDivergence:
    """A prompt without an event: the two models did not disagree within the budget
    (``agreed_eos``: both ended with the same EOS; ``budget_exhausted``), or ``model``'s logits
    were NaN or infinite before they disagreed (``non_finite_logits``: an overflow in low
    precision or a broken checkpoint; the prompt has no defined event)."""

    prompt_id: str
    category: str | None
    reason: str
    generated_tokens: int
    model: str | None = None  # whose logits were not finite (reason non_finite_logits)

    def to_record(self) -> dict:
        """The record as stored (:func:`copied_fields`)."""
        return copied_fields(self)

    @classmethod
    def from_record(cls, record: dict) -> "NoDivergence":
        """A record as stored (``to_record``); a field of the wrong type is a ValueError naming it."""
        item = cls(**record)
        checks = {"prompt_id": isinstance(item.prompt_id, str),
                  "category": item.category is None or isinstance(item.category, str),
                  "reason": item.reason in NO_DIVERGENCE_REASONS,
                  "generated_tokens": type(item.generated_tokens) is int and item.generated_tokens >= 0,
                  "model": item.model is None or isinstance(item.model, str)}
        bad = next((name for name, ok in checks.items() if not ok), None)
        if bad is not None:
            raise ValueError(f"field {bad!r} is not valid ({getattr(item, bad)!r})"[:200])
        return item


READOUTS = ("common_it", "common_pt")
READOUT_LABELS = {"common_it": "common-IT", "common_pt": "common-PT"}  # as the pages name them


def readout_label(readout: str) -> str:
    """How every page, table and plot names a readout ("common-IT"); one it does not know, with dashes."""
    return READOUT_LABELS.get(readout, str(readout).replace("_", "-"))


def readout_key(name):
    """A readout asked for by its key or as the pages print it, in any case (``common-IT``,
    ``Common_PT``): its key; anything else as given (the caller names it)."""
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_")
        if key in READOUT_LABELS:
            return key
    return name


def verdict_readout(verdict: dict | None) -> str:
    """The readout a stored verdict was decided on (its ``readout``: common_pt where a policy said
    so; common_it otherwise, as a verdict written before it was recorded was)."""
    return "common_pt" if (verdict or {}).get("readout") == "common_pt" else "common_it"


CELLS = ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")  # U_<upstream>_L_<late stack>


def in_run_order(records: list, prompt_ids: list[str]) -> list:
    """``records`` (cell records or no-divergence outcomes) in a run's one order, whether it was
    just computed, read back from its directory or merged from shards: by the prompt's place in
    ``prompt_ids`` (prompts not listed after, as they came), then boundary, then event kind in
    the order of :data:`KEY_SUFFIX` (the first divergence first; controls' kinds after)."""
    place = {p: k for k, p in enumerate(prompt_ids)}
    kinds = {k: n for n, k in enumerate(KEY_SUFFIX)}
    return sorted(records, key=lambda r: (place.get(r.prompt_id, len(place)), getattr(r, "boundary", 0),
                                          kinds.get(getattr(r, "kind", ""), len(kinds))))


def copied_fields(record) -> dict:
    """Every field of a record (a dataclass instance), its dicts and lists copied: what ``asdict``
    gives for these JSON-like fields, without its deep-copying bookkeeping (ten times faster)."""
    return {f.name: plain_copy(getattr(record, f.name)) for f in fields(record)}


def plain_copy(value):
    """A copy of nested dicts and lists (their leaves shared: numbers, strings, tensors): what a
    record holds, copied without ``deepcopy``'s bookkeeping."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value


def cell_effects(y) -> dict:
    """The one effect formula (DESIGN 1.4): ``E_PT``, ``E_IT`` and the interaction from the four
    cells ``y[cell]`` (numbers or arrays; stats derives the ratios from these)."""
    e_pt = y["upt_lit"] - y["upt_lpt"]
    e_it = y["uit_lit"] - y["uit_lpt"]
    return {"E_PT": e_pt, "E_IT": e_it, "interaction": e_it - e_pt}


@dataclass
class CellRecord:
    """One event scored at one boundary: four cells under each readout, and diagnostics."""

    key: str
    prompt_id: str
    category: str | None
    boundary: int
    position: int
    prompt_len: int
    prefix_len: int
    t_pt: int
    t_it: int
    t_pt_text: str
    t_it_text: str
    cells: dict[str, dict[str, float]]  # readout -> cell -> Y
    margin_pt: float  # PT's own top-1 minus top-2 at the event (natural pass)
    margin_it: float
    near_tie: bool
    natural_agrees: bool  # natural passes reproduce t_pt / t_it as argmax
    valid: bool = True
    invalid_reason: str | None = None
    extra: dict = field(default_factory=dict)
    kind: str = "first_diff"  # event kind (tokens.EVENT_KINDS) or a control's event kind
    t_pt_category: str | None = None  # tokens.token_category of each token
    t_it_category: str | None = None
    prompt_text: str | None = None  # the prompt as the models read it (decoded)
    continuation_text: str | None = None  # the shared generated tokens before the event (decoded)
    prefix_ids: list[int] | None = None  # prompt + shared generated tokens (for later analyses of a run)

    def to_record(self) -> dict:
        """The record as stored (:func:`copied_fields`)."""
        return copied_fields(self)

    @classmethod
    def from_record(cls, record: dict) -> "CellRecord":
        """A record as stored (``to_record``); a field of the wrong type is a ValueError naming
        it, so a damaged line is refused rather than read into statistics."""
        rec = cls(**record)
        for name in ("key", "prompt_id", "t_pt_text", "t_it_text", "kind"):
            _expect(name, getattr(rec, name), str)
        if rec.category is not None:  # (a prompt's category is read as text)
            _expect("category", rec.category, str)
        _expect("position", rec.position, int)  # negative: a control's point inside the prompt
        for name in ("boundary", "prompt_len", "prefix_len", "t_pt", "t_it"):
            value = getattr(rec, name)
            _expect(name, value, int)
            if value < 0:
                raise ValueError(f"field {name!r} is negative ({value})")
        for name in ("near_tie", "natural_agrees", "valid"):
            _expect(name, getattr(rec, name), bool)
        for name in ("margin_pt", "margin_it"):
            _expect(name, getattr(rec, name), float)
        _expect("extra", rec.extra, dict)
        _expect("cells", rec.cells, dict)
        for name in READOUTS:
            cells = rec.cells.get(name)
            if not isinstance(cells, dict) or set(CELLS) - set(cells):
                raise ValueError(f"field 'cells' lacks the four cells of readout {name!r}")
            for cell in CELLS:
                _expect(f"cells.{name}.{cell}", cells[cell], float)
        if rec.prefix_ids is not None and (not isinstance(rec.prefix_ids, list)
                                           or not all(type(t) is int for t in rec.prefix_ids)):
            raise ValueError("field 'prefix_ids' must be a list of token ids")
        return rec

    def effects(self, readout: str = "common_it") -> dict[str, float]:
        """This event's ``E_PT``, ``E_IT`` and interaction under ``readout``."""
        return cell_effects(self.cells[readout])

    @property
    def event_key(self) -> str:
        """The event's key without the boundary (``p7#first``): what other analyses' records of
        the same event carry."""
        return RecordKey.parse(self.key).event


def _expect(name: str, value, kind: type) -> None:
    """``value`` is of ``kind`` (bool is not an int; an int is a float; NaN is a float)."""
    ok = type(value) is bool if kind is bool else (
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
        isinstance(value, kind) and not isinstance(value, bool))
    if not ok:
        raise ValueError(f"field {name!r} must be {kind.__name__}, not {value!r}"[:200])
