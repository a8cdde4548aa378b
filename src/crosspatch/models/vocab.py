"""The real vocabulary: the token ids an argmax may pick.

Masked out: ``lm_head`` rows beyond the tokenizer (vocabulary padding), ids that are not the
same token in both tokenizers, and never-trained placeholder tokens (Gemma's ``<unusedN>``,
Llama 3's ``<|reserved_special_token_N|>``, ...). What was masked, and why, is recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import PromptTokenizationMismatchError, VocabularyMismatchError
from .paths import some_of

PLACEHOLDER_PATTERNS: dict[str, str] = {
    "gemma_unused": r"^<unused\d+>$",
    "llama3_reserved": r"^<\|reserved_special_token_\d+\|>$",
    "t5_extra_id": r"^<extra_id_\d+>$",
    "generic_reserved": r"^<\|?reserved_?\d+\|?>$",
    "qwen_extra": r"^<\|extra_\d+\|>$",
    "madeup_word": r"^<\|?madeupword\d+\|?>$",
    "mistral_control": r"^\[control_\d+\]$",  # Mistral v0.3's unused control tokens
    "tekken_special": r"^<SPECIAL_\d+>$",  # Mistral Nemo's Tekken tokenizer
    "phi3_placeholder": r"^<\|placeholder\d+\|>$",
    "deepseek_placeholder": r"^<｜place▁holder▁no▁\d+｜>$",
}


@dataclass
class RealVocabulary:
    """Boolean mask of argmax-eligible ids plus a record of what was masked and why."""

    mask: torch.Tensor  # bool [n_ids]
    masked_counts: dict[str, int] = field(default_factory=dict)
    patterns_matched: list[str] = field(default_factory=list)
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # see ``on``

    def for_rows(self, n_rows: int) -> torch.Tensor:
        """The mask fitted to a logits width (rows beyond the shared tokenizer are never real)."""
        if n_rows <= self.mask.numel():
            return self.mask[:n_rows]
        return torch.cat([self.mask, torch.zeros(n_rows - self.mask.numel(), dtype=torch.bool)])

    def on(self, n_rows: int, device: torch.device) -> torch.Tensor:
        """:meth:`for_rows` on ``device``, copied there once (a decoding step must not wait for
        a host-to-device copy of the mask)."""
        key = (n_rows, str(device))
        if key not in self._on_device:
            self._on_device[key] = self.for_rows(n_rows).to(device)
        return self._on_device[key]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_on_device": {}}  # device copies stay home

    def as_record(self) -> dict:
        return {
            "real_ids": int(self.mask.sum()),
            "total_ids": int(self.mask.numel()),
            "masked_counts": dict(self.masked_counts),
            "placeholder_patterns_matched": list(self.patterns_matched),
        }


def _id_to_token(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def build_real_vocabulary(tok_pt, tok_it, n_rows: int) -> RealVocabulary:
    """Mask for a pair of tokenizers and an ``lm_head`` of ``n_rows`` rows.

    Raises VocabularyMismatchError when a token string has different ids in the two tokenizers
    (logit(t) would then compare different tokens)."""
    pt_tokens, it_tokens = _id_to_token(tok_pt), _id_to_token(tok_it)
    pt_ids, it_ids = tok_pt.get_vocab(), tok_it.get_vocab()
    conflicts = [t for t, i in pt_ids.items() if t in it_ids and it_ids[t] != i]
    if conflicts:
        examples = ", ".join(f"{t!r}: PT {pt_ids[t]} vs IT {it_ids[t]}" for t in conflicts[:5])
        raise VocabularyMismatchError(
            f"{len(conflicts)} token(s) have different ids in the two tokenizers ({examples}); "
            "logits of the two models do not index the same tokens"
        )
    mask = torch.zeros(n_rows, dtype=torch.bool)
    counts = {"beyond_tokenizer": 0, "not_shared": 0}
    compiled = {name: re.compile(p) for name, p in PLACEHOLDER_PATTERNS.items()}
    matched: set[str] = set()
    for i in range(n_rows):
        tp, ti = pt_tokens.get(i), it_tokens.get(i)
        if tp is None and ti is None:
            counts["beyond_tokenizer"] += 1
            continue
        if tp is None or ti is None or tp != ti:
            counts["not_shared"] += 1
            continue
        name = next((n for n, rx in compiled.items() if rx.match(tp)), None)
        if name is not None:
            counts[f"placeholder:{name}"] = counts.get(f"placeholder:{name}", 0) + 1
            matched.add(PLACEHOLDER_PATTERNS[name])
            continue
        mask[i] = True
    return RealVocabulary(mask=mask, masked_counts=counts, patterns_matched=sorted(matched))


NON_FINITE = -1  # what masked_argmax picks where the logits are NaN or infinite


def masked_argmax(logits: torch.Tensor, real: RealVocabulary) -> torch.Tensor:
    """Argmax over the real vocabulary of ``[..., V]`` logits; :data:`NON_FINITE` where the real
    vocabulary's logits hold a NaN, a +inf or no finite value (an overflow or a broken
    checkpoint: no token is the model's choice there)."""
    mask = real.on(logits.shape[-1], logits.device)
    masked = logits.masked_fill(~mask, float("-inf"))
    top = masked.amax(dim=-1)  # NaN if any logit is NaN
    return torch.where(torch.isfinite(top), masked.argmax(dim=-1), NON_FINITE)


def top2_margin(logits: torch.Tensor, real: RealVocabulary) -> torch.Tensor:
    """top-1 minus top-2 logit over the real vocabulary (``[..., V]`` -> ``[...]``)."""
    mask = real.on(logits.shape[-1], logits.device)
    top = logits.masked_fill(~mask, float("-inf")).topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _pieces(tokenizer, ids) -> str:
    """The tokens ``ids`` stand for, as a list's text (empty where the tokenizer cannot say)."""
    try:
        return repr(tokenizer.convert_ids_to_tokens(list(ids)))
    except Exception:  # a tokenizer without the method, or ids it does not know
        return ""


def _added_tokens_hint(tok_pt, tok_it, text: str) -> str:
    """Why two tokenizers split ``text`` apart when the descendant's has tokens the base's lacks
    (a chat template's markup, tokens added in fine-tuning) and ``text`` holds them; else ''."""
    try:
        known = set(tok_pt.get_vocab())
        added = [t for t in (tok_it.get_added_vocab() or {}) if t not in known and t in text]
    except Exception:  # a tokenizer without these methods: no hint
        return ""
    if not added:
        return ""
    return (f": the text holds tokens the descendant's tokenizer has and the base's lacks ({', '.join(added[:4])}), "
            "which the two models cannot read alike; with --chat-template, the descendant's chat template writes them: "
            "run on raw text (without --chat-template, the method's default) or with prompts that do not hold them")


def _token_ids(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    """``tokenizer``'s ids of ``text``; a tokenizer that loads but cannot tokenize (a damaged
    tokenizer_config.json: a ``model_max_length`` of text, say) is a :class:`ModelLoadError`."""
    from ..errors import CrosspatchError, ModelLoadError, first_line

    try:
        return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    except CrosspatchError:
        raise
    except Exception as exc:  # (transformers and tokenizers raise many types)
        raise ModelLoadError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} loads but cannot tokenize "
                             f"text ({type(exc).__name__}: {first_line(exc, 200)}): is its tokenizer_config.json "
                             "damaged?") from None


def tokenize_once(tok_pt, tok_it, prompt_id: str, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``, checked to be identical under both tokenizers (``add_special_tokens``
    False for text a chat template rendered: it holds its special tokens, BOS included, already)."""
    ids_pt = _token_ids(tok_pt, text, add_special_tokens)
    ids_it = _token_ids(tok_it, text, add_special_tokens) if tok_it is not tok_pt else ids_pt
    if list(ids_pt) != list(ids_it):
        first = next(
            (k for k, (a, b) in enumerate(zip(ids_pt, ids_it)) if a != b), min(len(ids_pt), len(ids_it))
        )
        raise PromptTokenizationMismatchError(
            f"prompt {prompt_id!r} tokenizes differently: PT {len(ids_pt)} ids, IT {len(ids_it)} ids, "
            f"first difference at index {first} (PT {ids_pt[first:first + 3]} {_pieces(tok_pt, ids_pt[first:first + 3])} "
            f"vs IT {ids_it[first:first + 3]} {_pieces(tok_it, ids_it[first:first + 3])})"
            + _added_tokens_hint(tok_pt, tok_it, text)
        )
    if not ids_pt:
        raise PromptTokenizationMismatchError(f"prompt {prompt_id!r} tokenizes to no ids")
    return list(ids_pt)


def unknown_token_warning(tokenizer, prompt_ids: list[str], token_ids: list[list[int]]) -> str | None:
    """What to say when prompts hold the tokenizer's unknown token (``unk_token``): text it has no
    piece for (a character outside a vocabulary without byte fallback), which both models read as
    that one token, not as the text; None when none does, or when the tokenizer has no unknown
    token of its own (GPT-2's ``unk_token`` is its end-of-text token, which a prompt may hold)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    others = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    if not isinstance(unk, int) or unk in others:
        return None
    hit = [(pid, ids.count(unk)) for pid, ids in zip(prompt_ids, token_ids) if unk in ids]
    if not hit:
        return None
    named = some_of([f"{pid!r} ({n})" for pid, n in hit], 5)
    return (f"{len(hit)} prompt(s) hold the tokenizer's unknown token {tokenizer.unk_token!r} (text it has no "
            f"piece for, read by both models as that one token): {named}; their events are about that token, "
            "not the text")


def trailing_eos_warning(tokenizer, prompt_ids: list[str], token_ids: list[list[int]]) -> str | None:
    """What to say when prompts end with the tokenizer's end-of-sequence token: a tokenizer saved
    to append it (``add_eos_token``, or a post-processor that adds it: a training setting) makes both
    models decode past the end of a text, so every event follows an end of text; None when none does."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, int) or eos == getattr(tokenizer, "bos_token_id", None):
        return None  # (GPT-2's one special token opens texts too)
    hit = [pid for pid, ids in zip(prompt_ids, token_ids) if ids and ids[-1] == eos]
    if not hit:
        return None
    named = some_of([repr(pid) for pid in hit], 5)
    return (f"{len(hit)} of {len(token_ids)} prompt(s) end with the end-of-sequence token {tokenizer.eos_token!r}: "
            f"{named}; the models decode past the end of a text there. If the tokenizer appends it (add_eos_token, "
            "a training setting), save it without (tokenizer.add_eos_token = False) and run again")


def prompt_token_warnings(tokenizer, prompt_ids: list[str], token_ids: list[list[int]]) -> list[str]:
    """What a run says of its prompts' tokens: unknown tokens, a trailing end-of-sequence token."""
    said = (unknown_token_warning(tokenizer, prompt_ids, token_ids), trailing_eos_warning(tokenizer, prompt_ids, token_ids))
    return [text for text in said if text]
