"""What preflight measures, without deciding anything: the domain text and probe prompts it reads,
next-token agreement between two roles, the adapter's weights, generation health (repetition,
EOS) and domain negative log-likelihood."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import PromptFileError
from ..inputs.text import read_text
from .preflight_policy import DEFAULT_PROBE_PROMPTS, PreflightPolicy


def read_domain_text(path: str | Path) -> list[str]:
    """Held-out domain text: a ``.jsonl`` of objects with a ``text`` field, else plain text
    (documents separated by blank lines). Empty or unreadable input is a :class:`PromptFileError`."""
    import json

    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise PromptFileError(f"--domain-text must be the path of a .jsonl or text file, not {path!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptFileError(f"--domain-text {path}: no such file")
    if not path.is_file():
        raise PromptFileError(f"--domain-text {path}: not a regular file (give a .jsonl or a text file)")
    try:
        raw = read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"--domain-text {path}: not readable UTF-8 text ({exc})") from None
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise PromptFileError(f"--domain-text {path}:{number}: not JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise PromptFileError(f"--domain-text {path}:{number}: each line needs a string field 'text'")
            texts.append(row["text"])
    else:
        texts = [block.strip() for block in raw.split("\n\n")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise PromptFileError(f"--domain-text {path} holds no text")
    return texts


def _prompt_texts(prompts) -> tuple[list[str], list[str], str]:
    """(ids, texts, source) of the probe prompts: the given prompts (file, list) or the defaults."""
    if prompts is None:
        return [f"probe-{i}" for i in range(len(DEFAULT_PROBE_PROMPTS))], list(DEFAULT_PROBE_PROMPTS), "built-in probes"
    from ..inputs.prompts import prompts_label, raw_text_prompts

    items = raw_text_prompts(prompts, "preflight")
    return [p.id for p in items], [p.prompt for p in items], prompts_label(prompts) or "given"


# -- measurements ------------------------------------------------------------------------------


def _chunks(sequences: list[list[int]], vocab: int, budget_bytes: int = 1 << 29) -> list[list[int]]:
    """Indices of sequences in chunks whose fp32 logits stay within ``budget_bytes`` per model."""
    chunks, current, size = [], [], 0
    for i, seq in enumerate(sequences):
        cost = len(seq) * vocab * 4
        if current and size + cost > budget_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(i)
        size += cost
    return chunks + ([current] if current else [])


def _logits(models, role: str, sequences: list[list[int]]) -> list[torch.Tensor]:
    """fp32 logits ``[len(seq), V]`` of ``role`` for each (right-padded) sequence."""
    from ..models.forward import padded_batch

    out = []
    with models.use(role) as handle, torch.inference_mode(), handle.active():
        ids, mask, positions, lengths = padded_batch(sequences, models.pad_id, handle.input_device)
        logits = handle.anatomy.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                      return_dict=True).logits.float().cpu()
    for row, length in enumerate(lengths.tolist()):
        out.append(logits[row, :length])
    return out


class Agreement:
    """Running logit agreement of model ``b`` with model ``a`` over the real vocabulary. Positions
    where either model's logits are not finite (NaN or infinite: broken weights, a float16
    overflow) are counted per model and left out of the differences, which they would otherwise
    hide (a NaN compares false with every tolerance, and Python's ``max`` skips it)."""

    def __init__(self) -> None:
        self.max_abs, self.sum_abs, self.values, self.sum_kl, self.positions, self.top1 = 0.0, 0.0, 0, 0.0, 0, 0
        self.compared, self.non_finite_a, self.non_finite_b = 0, 0, 0

    def add(self, a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> None:
        a, b = a[:, real], b[:, real]
        finite_a, finite_b = torch.isfinite(a).all(-1), torch.isfinite(b).all(-1)
        self.positions += a.shape[0]
        self.non_finite_a += int((~finite_a).sum())
        self.non_finite_b += int((~finite_b).sum())
        both = finite_a & finite_b
        a, b = a[both], b[both]
        diff = (a - b).abs()
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.numel() else 0.0)
        self.sum_abs += float(diff.sum())
        self.values += diff.numel()
        log_a, log_b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        self.sum_kl += float((log_a.exp() * (log_a - log_b)).sum(-1).clamp(min=0).sum())
        self.compared += a.shape[0]
        self.top1 += int((a.argmax(-1) == b.argmax(-1)).sum())

    def numbers(self) -> dict:
        """The differences over the positions both models computed finite logits for (``compared``
        of ``positions``), and how many positions each model's logits were not finite at."""
        n = max(self.compared, 1)
        return {"max_abs_logit_diff": self.max_abs, "mean_abs_logit_diff": self.sum_abs / max(self.values, 1),
                "mean_kl": self.sum_kl / n, "top1_agreement": self.top1 / n, "positions": self.positions,
                "compared_positions": self.compared, "non_finite_positions": [self.non_finite_a, self.non_finite_b]}


# PEFT methods whose ``get_delta_weight`` is the additive update W' - W (LoRA and its variants;
# DoRA's magnitude rescaling aside). Rotations (OFT, BOFT, HRA) return the rotation, IA3 and LN
# tuning have none: their ΔW is not measured (None), never a norm of something else.
ADDITIVE_METHODS = frozenset({"LORA", "ADALORA", "LOHA", "LOKR", "VERA", "FOURIERFT"})


def adapter_weight_report(peft_model, adapter_name: str) -> dict:
    """Per adapted module: the effective ``ΔW`` norm (PEFT's ``get_delta_weight``, for the
    :data:`ADDITIVE_METHODS`; None for the others), the base weight's norm, rank and scaling; plus
    the wrapped ``modules_to_save`` and the adapter's PEFT ``method``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft_type = getattr((getattr(peft_model, "peft_config", None) or {}).get(adapter_name), "peft_type", None)
    method = str(getattr(peft_type, "value", peft_type) or "").upper()  # PeftType is a str enum
    additive = method in ADDITIVE_METHODS
    rows, saved = [], []
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            short = name.removeprefix("base_model.model.")
            if type(module).__name__ == "ModulesToSaveWrapper":
                saved.append(short)
                continue
            if not isinstance(module, BaseTunerLayer) or not any(
                    adapter_name in (getattr(module, part, None) or {}) for part in module.adapter_layer_names):
                continue
            base = module.get_base_layer()
            weight = getattr(base, "weight", None)
            row = {"module": short, "rank": (getattr(module, "r", {}) or {}).get(adapter_name),
                   "scaling": (getattr(module, "scaling", {}) or {}).get(adapter_name),
                   "weight_norm": float(weight.float().norm()) if weight is not None else None}
            try:
                delta = module.get_delta_weight(adapter_name).float() if additive else None  # pyright: ignore[reportAttributeAccessIssue]
                row["delta_norm"] = float(delta.norm()) if delta is not None else None
            except (AttributeError, NotImplementedError, RuntimeError):  # a tuner without ΔW
                row["delta_norm"] = None
            row["relative"] = (row["delta_norm"] / row["weight_norm"]) if row["delta_norm"] is not None \
                and row["weight_norm"] else None
            lora_b = getattr(module, "lora_B", None)  # a LoRA layer's B by adapter: a Linear (LoRA), a Parameter (AdaLoRA)
            if lora_b is not None and adapter_name in lora_b:
                b = lora_b[adapter_name]
                row["b_zero"] = bool(torch.count_nonzero(getattr(b, "weight", b)) == 0)
            rows.append(row)
    return {"modules": rows, "modules_to_save": saved, "method": method or None}


def _repeated_ngram_rate(tokens: list[int], n: int) -> float:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) >= 2 else 0.0


def generation_health(outputs: list[list[int]], tokenizer, eos: set[int], policy: PreflightPolicy) -> dict:
    """Per-output flags and rates: empty, looping, EOS never reached, special tokens leaking."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            special.add(int(token_id))
    special -= set(eos)
    pad = getattr(tokenizer, "pad_token_id", None)
    flags = []
    for out in outputs:
        body = out[:-1] if out and out[-1] in eos else out
        text = tokenizer.decode(body, skip_special_tokens=True)
        flags.append({"empty": not text.strip(), "loop": _repeated_ngram_rate(body, policy.loop_ngram) >= policy.loop_threshold,
                      "no_eos": not (out and out[-1] in eos),
                      "special_leak": any(t in special and t != pad for t in body)})
    n = max(len(flags), 1)
    rates = {f"{k}_rate": sum(f[k] for f in flags) / n for k in ("empty", "loop", "no_eos", "special_leak")}
    return {"rates": rates, "flags": flags}


def domain_nll(models, role: str, sequences: list[list[int]]) -> tuple[float, int]:
    """Mean per-token negative log-likelihood of ``role`` over the sequences (and the token count)."""
    total, count = 0.0, 0
    vocab = models.real_vocab.mask.numel()
    for chunk in _chunks(sequences, vocab):
        logits = _logits(models, role, [sequences[i] for i in chunk])
        for i, rows in zip(chunk, logits):
            target = torch.tensor(sequences[i][1:])
            if not len(target):
                continue
            total += float(torch.nn.functional.cross_entropy(rows[:-1], target, reduction="sum"))
            count += len(target)
    return (total / count if count else math.nan), count


# -- the workflow ------------------------------------------------------------------------------
