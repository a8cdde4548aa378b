"""Pair checks run before any compute; each failure is a named error saying what differs."""

from __future__ import annotations

from ..errors import (
    ArchitectureMismatchError,
    HiddenSizeMismatchError,
    LayerCountMismatchError,
    SpecialTokensMismatchError,
)

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


def check_pair_compatible(pt, it) -> None:
    """Architecture class, layer count and hidden size must match (handles: ModelHandle)."""
    compare_facts(*({"class": type(h.anatomy.model).__name__, "num_layers": h.anatomy.num_layers,
                     "hidden_size": h.anatomy.hidden_size} for h in (pt, it)))


def compare_facts(a: dict, b: dict) -> None:
    """The checks on recorded facts (``class``, ``num_layers``, ``hidden_size``) of two models."""
    if a["class"] != b["class"]:
        raise ArchitectureMismatchError(f"architecture differs: PT is {a['class']}, IT is {b['class']}")
    if a["num_layers"] != b["num_layers"]:
        raise LayerCountMismatchError(
            f"layer count differs: PT has {a['num_layers']} decoder layers, IT has {b['num_layers']}"
        )
    if a["hidden_size"] != b["hidden_size"]:
        raise HiddenSizeMismatchError(f"hidden size differs: PT {a['hidden_size']}, IT {b['hidden_size']}")


def check_special_tokens(tok_pt, tok_it, allow_mismatch: bool = False) -> list[str]:
    """Compare BOS/EOS/PAD/UNK. Raises unless ``allow_mismatch``; then returns warnings."""
    diffs = []
    for name in _SPECIAL:
        x, y = getattr(tok_pt, name, None), getattr(tok_it, name, None)
        if x != y:
            diffs.append(f"{name}: PT {x!r} vs IT {y!r}")
    if diffs and not allow_mismatch:
        raise SpecialTokensMismatchError(
            "special tokens differ (" + "; ".join(diffs) + "); pass --allow-special-token-mismatch "
            "(allow_special_token_mismatch=True) to run anyway, with the difference recorded"
        )
    return [f"special token mismatch accepted: {d}" for d in diffs]
