"""``crosspatch preflight``: is an adapter active, does its merge agree with it, do the models
still generate sensibly, and did the fine-tune learn its domain, before anyone merges or ships.

Checks (each ``pass``, ``warn``, ``fail`` or ``skip``, with its numbers and, for a failure, the
likely causes it could tell apart):

- ``adapter-active`` (with ``adapter``): per module of the adapter the effective ``ΔW`` (PEFT's
  own ``get_delta_weight``: ``B A`` times the scaling), its Frobenius norm, relative to the base
  weight's, the rank and the scaling; ``modules_to_save`` and bias. Then how far the logits move
  from the base over the adapter's own greedy continuations (max and mean absolute difference,
  mean KL(base || adapter), top-1 agreement) and on how many prompts the greedy output changes.
  The adapter "changes nothing" when every ``ΔW`` is zero or when no logit moves by more than
  ``min_logit_change`` and no greedy output changes; a failure names which.
- ``merged-changes`` (with ``merged``): the same logit movement for the merged checkpoint.
- ``adapter-vs-merged`` (with both): logit agreement of the merged checkpoint with the adapter
  over the adapter's continuations, against dtype-aware tolerances (:data:`TOLERANCES`), and the
  first generated position where their greedy decodes differ, with both margins: a disagreement
  whose two margins add up to no more than twice the max-abs tolerance is rounding; a larger one
  is a confident disagreement (a bad merge).
- ``generation-health``: per model, empty outputs, repetition loops (the share of repeated
  n-grams in an output at least ``loop_threshold``), outputs that never reach EOS within the
  budget, and special or chat-template tokens leaking into the text. A descendant fails where
  its rate exceeds the policy's maximum and the base's own rate (a base model may loop).
- ``domain-learning`` (with ``domain_text``): per-token NLL of every model on held-out domain
  text; a descendant that does not lower it is a warning (a failure with
  ``require_domain_gain``): an instruction tune may raise raw-text NLL and still be fine.

The result passes when no check fails; ``crosspatch preflight`` exits 0 or 1 like ``gate``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import OptionError, PromptFileError
from ..core.registry import Section, Table

KIND = "preflight"
SCHEMA = "crosspatch.preflight/1"
STATUSES = ("pass", "warn", "fail", "skip")

# The method's authors' acceptance of a bf16 merge; float32 merges are held to rounding.
TOLERANCES = {
    "half": {"max_abs_logit_diff": 0.6, "mean_abs_logit_diff": 0.05, "mean_kl": 2e-3, "min_top1_agreement": 0.99},
    "float32": {"max_abs_logit_diff": 0.02, "mean_abs_logit_diff": 2e-3, "mean_kl": 1e-5, "min_top1_agreement": 0.999},
}

# Probe prompts when none are given: short, generic, in English.
DEFAULT_PROBE_PROMPTS = (
    "The weather today is", "Question: What is the capital of France?\nAnswer:", "Once upon a time,",
    "Write a short note to a colleague about the meeting.", "def add(a, b):", "The three primary colours are",
    "Summarise: The committee met on Tuesday and agreed to postpone the vote.", "Translate to French: good morning",
)


@dataclass
class PreflightPolicy:
    """Thresholds of the checks; tolerances left ``None`` follow the dtype (:data:`TOLERANCES`)."""

    max_abs_logit_diff: float | None = None
    mean_abs_logit_diff: float | None = None
    mean_kl: float | None = None
    min_top1_agreement: float | None = None
    max_confident_divergences: int = 0
    min_logit_change: float = 1e-3
    loop_ngram: int = 3
    loop_threshold: float = 0.5
    max_loop_rate: float = 0.25
    max_empty_rate: float = 0.25
    max_special_leak_rate: float = 0.0
    require_domain_gain: bool = False

    @classmethod
    def from_dict(cls, values: dict | None) -> PreflightPolicy:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(f"unknown preflight policy field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        policy = cls(**values)
        for name in ("max_abs_logit_diff", "mean_abs_logit_diff", "mean_kl", "min_logit_change"):
            value = getattr(policy, name)
            if value is not None and (not isinstance(value, (int, float)) or not value >= 0):
                raise OptionError(f"preflight policy {name} must be a number >= 0, not {value!r}")
        for name in ("min_top1_agreement", "loop_threshold", "max_loop_rate", "max_empty_rate", "max_special_leak_rate"):
            value = getattr(policy, name)
            if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
                raise OptionError(f"preflight policy {name} must be a fraction in [0, 1], not {value!r}")
        if not isinstance(policy.loop_ngram, int) or policy.loop_ngram < 1:
            raise OptionError(f"preflight policy loop_ngram must be a positive integer, not {policy.loop_ngram!r}")
        return policy

    def tolerances(self, precision: str) -> dict:
        """The merge tolerances for ``precision`` ("half" or "float32"), the policy's own where set."""
        chosen = dict(TOLERANCES[precision])
        for key in chosen:
            if getattr(self, key) is not None:
                chosen[key] = getattr(self, key)
        return chosen


@dataclass
class Check:
    name: str
    status: str
    summary: str
    causes: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    table: dict | None = None  # {"header": [...], "rows": [[...]]}


@dataclass
class PreflightResult:
    """What ``preflight`` found; ``passed`` when no check failed. ``document`` is ``preflight.json``."""

    document: dict
    out: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.document["passed"])

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def checks(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.document["checks"]}

    def failed(self) -> list[str]:
        return [c["name"] for c in self.document["checks"] if c["status"] == "fail"]

    def __repr__(self) -> str:
        states = ", ".join(f"{c['name']}={c['status']}" for c in self.document["checks"])
        return f"PreflightResult({'pass' if self.passed else 'fail'}: {states})"


# -- inputs ------------------------------------------------------------------------------------

def read_domain_text(path: str | Path) -> list[str]:
    """Held-out domain text: a ``.jsonl`` of objects with a ``text`` field, else plain text
    (documents separated by blank lines). Empty or unreadable input is a :class:`PromptFileError`."""
    import json

    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"--domain-text {path}: no such file")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"--domain-text {path}: not readable UTF-8 text ({exc})") from None
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
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
    from ..inputs.prompts import as_prompts, load_prompts

    items = load_prompts(prompts) if isinstance(prompts, (str, Path)) else as_prompts(prompts)
    with_images = [p.id for p in items if getattr(p, "image", None)]
    if with_images:
        raise PromptFileError(f"preflight compares text generations; prompts with images ({', '.join(with_images[:3])}) "
                              "are not supported here")
    return [p.id for p in items], [p.prompt for p in items], str(prompts) if isinstance(prompts, (str, Path)) else "given"


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
        logits = handle.anatomy.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float().cpu()
    for row, length in enumerate(lengths.tolist()):
        out.append(logits[row, :length])
    return out


class Agreement:
    """Running logit agreement of model ``b`` with model ``a`` over the real vocabulary."""

    def __init__(self) -> None:
        self.max_abs, self.sum_abs, self.values, self.sum_kl, self.positions, self.top1 = 0.0, 0.0, 0, 0.0, 0, 0

    def add(self, a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> None:
        a, b = a[:, real], b[:, real]
        diff = (a - b).abs()
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.numel() else 0.0)
        self.sum_abs += float(diff.sum())
        self.values += diff.numel()
        log_a, log_b = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        self.sum_kl += float((log_a.exp() * (log_a - log_b)).sum(-1).clamp(min=0).sum())
        self.positions += a.shape[0]
        self.top1 += int((a.argmax(-1) == b.argmax(-1)).sum())

    def numbers(self) -> dict:
        n = max(self.positions, 1)
        return {"max_abs_logit_diff": self.max_abs, "mean_abs_logit_diff": self.sum_abs / max(self.values, 1),
                "mean_kl": self.sum_kl / n, "top1_agreement": self.top1 / n, "positions": self.positions}


def adapter_weight_report(peft_model, adapter_name: str) -> dict:
    """Per adapted module: the effective ``ΔW`` norm (PEFT's ``get_delta_weight``), the base
    weight's norm, rank and scaling; plus the wrapped ``modules_to_save``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

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
                delta = module.get_delta_weight(adapter_name).float()
                row["delta_norm"] = float(delta.norm())
            except (AttributeError, NotImplementedError, RuntimeError):  # a tuner without ΔW (e.g. IA3 scaling)
                row["delta_norm"] = None
            row["relative"] = (row["delta_norm"] / row["weight_norm"]) if row["delta_norm"] is not None \
                and row["weight_norm"] else None
            if hasattr(module, "lora_B") and adapter_name in module.lora_B:
                row["b_zero"] = bool(torch.count_nonzero(module.lora_B[adapter_name].weight) == 0)
            rows.append(row)
    return {"modules": rows, "modules_to_save": saved}


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

def _precision(dtype: str, merged_path: str | None) -> str:
    """"half" when the load dtype or the merged checkpoint's stored weights are 16-bit."""
    if dtype in ("bfloat16", "float16"):
        return "half"
    if merged_path:
        stored = _stored_dtypes(merged_path)
        if stored & {"F16", "BF16"}:
            return "half"
    return "float32"


def _stored_dtypes(path: str) -> set[str]:
    root = Path(path)
    if not root.is_dir():
        return set()
    from safetensors import safe_open

    found = set()
    for f in sorted(root.glob("*.safetensors"))[:1]:
        with safe_open(str(f), framework="pt") as handle:
            for key in list(handle.keys())[:8]:
                found.add(handle.get_slice(key).get_dtype())
    return found


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else (f"{x:.{digits}g}")
    return str(x)


def _changes_check(name: str, who: str, agreement: dict, changed: int, prompts: int, policy: PreflightPolicy,
                   weights: dict | None) -> Check:
    numbers = {**agreement, "greedy_changed": changed, "prompts": prompts}
    causes: list[str] = []
    moved = agreement["max_abs_logit_diff"] > policy.min_logit_change or changed > 0
    table = None
    if weights is not None:
        rows = weights["modules"]
        measurable = [r for r in rows if r["delta_norm"] is not None]
        numbers.update(adapted_modules=len(rows), nonzero_delta_modules=sum(r["delta_norm"] > 0 for r in measurable),
                       max_relative_delta=max((r["relative"] or 0.0 for r in measurable), default=0.0),
                       modules_to_save=weights["modules_to_save"], bias=weights.get("bias"))
        table = {"header": ["module", "rank", "scaling", "‖ΔW‖", "‖ΔW‖/‖W‖"],
                 "rows": [[r["module"], _fmt(r["rank"]), _fmt(r["scaling"]), _fmt(r["delta_norm"]), _fmt(r["relative"])]
                          for r in rows]}
        if not rows and not weights["modules_to_save"]:
            causes.append("no module of the model carries the adapter: it was not loaded, or its target_modules "
                          f"({weights.get('target_modules')}) match no module of this architecture")
        elif measurable and all(r["delta_norm"] == 0 for r in measurable):
            if all(r.get("scaling") == 0 for r in measurable):
                causes.append("every adapted module has scaling 0 (lora_alpha = 0): ΔW = 0")
            elif all(r.get("b_zero") for r in measurable if "b_zero" in r):
                causes.append("every LoRA B matrix is zero, so ΔW = B·A = 0: the adapter was saved before training "
                              "(or trained with learning rate 0, or with its LoRA layers frozen)")
            else:
                causes.append("every ΔW is zero")
        if weights.get("unmatched_targets"):
            causes.append(f"target_modules {weights['unmatched_targets']} match no module of this architecture")
    if not moved and not causes:
        causes.append(f"ΔW is not zero but no logit moves by more than {policy.min_logit_change} and no greedy output "
                      "changes: the adapter may be disabled, or adapt modules the prompts do not reach (e.g. a vision "
                      "tower for text prompts)")
    inactive = not moved or (weights is not None and causes and not numbers.get("nonzero_delta_modules"))
    status = "fail" if inactive else "pass"
    summary = (f"the {who} changes nothing: " + "; ".join(causes)) if inactive else (
        f"the {who} moves the logits by up to {agreement['max_abs_logit_diff']:.3g} (mean KL from the base "
        f"{agreement['mean_kl']:.3g}); its greedy output differs from the base's on {changed} of {prompts} prompts")
    if not inactive and causes:
        status, summary = "warn", summary + "; " + "; ".join(causes)
    return Check(name, status, summary, causes if inactive else [], numbers, table)


def _first_divergences(ad_out: list[list[int]], m_out: list[list[int]]) -> list[int | None]:
    result = []
    for a, m in zip(ad_out, m_out):
        position = next((i for i, (x, y) in enumerate(zip(a, m)) if x != y), None)
        if position is None and len(a) != len(m):
            position = min(len(a), len(m))
        result.append(position)
    return result


def _merge_check(agreement: dict, divergences: list[dict], tolerances: dict, precision: str,
                 policy: PreflightPolicy) -> Check:
    numbers = {**agreement, "tolerances": tolerances, "precision": precision,
               "divergences": len(divergences), "confident_divergences": sum(d["confident"] for d in divergences)}
    failures = []
    if agreement["max_abs_logit_diff"] > tolerances["max_abs_logit_diff"]:
        failures.append(f"max |Δlogit| {agreement['max_abs_logit_diff']:.3g} > {tolerances['max_abs_logit_diff']:g}")
    if agreement["mean_abs_logit_diff"] > tolerances["mean_abs_logit_diff"]:
        failures.append(f"mean |Δlogit| {agreement['mean_abs_logit_diff']:.3g} > {tolerances['mean_abs_logit_diff']:g}")
    if agreement["mean_kl"] > tolerances["mean_kl"]:
        failures.append(f"mean KL {agreement['mean_kl']:.3g} > {tolerances['mean_kl']:g}")
    if agreement["top1_agreement"] < tolerances["min_top1_agreement"]:
        failures.append(f"top-1 agreement {agreement['top1_agreement']:.4f} < {tolerances['min_top1_agreement']:g}")
    if numbers["confident_divergences"] > policy.max_confident_divergences:
        failures.append(f"{numbers['confident_divergences']} confident greedy disagreement(s) (margins beyond rounding)")
    table = {"header": ["prompt", "first divergence", "adapter token", "merged token", "adapter margin",
                        "merged margin", "kind"],
             "rows": [[d["prompt"], str(d["position"]), d["adapter_token"], d["merged_token"], _fmt(d["adapter_margin"]),
                       _fmt(d["merged_margin"]), "confident" if d["confident"] else "rounding"] for d in divergences]}
    if failures:
        summary = ("the merged checkpoint does not compute what the adapter computes (" + "; ".join(failures)
                   + "): a bad merge (merged twice, wrong scaling, wrong base, or a lossy dtype)")
        return Check("adapter-vs-merged", "fail", summary, failures, numbers, table)
    summary = (f"merged agrees with the adapter within {precision} tolerances (max |Δlogit| "
               f"{agreement['max_abs_logit_diff']:.3g}, mean KL {agreement['mean_kl']:.3g}, top-1 "
               f"{agreement['top1_agreement']:.4f}); {len(divergences)} greedy disagreement(s), all rounding")
    return Check("adapter-vs-merged", "pass", summary, [], numbers, table)


def preflight_inputs(base: str, adapter: str | None, merged: str | None, prompts, domain_text, max_new_tokens: int,
                     policy: PreflightPolicy, options) -> dict:
    return {"base": str(base), "adapter": str(adapter) if adapter else None, "merged": str(merged) if merged else None,
            "prompts": str(prompts) if isinstance(prompts, (str, Path)) else (None if prompts is None else "given"),
            "domain_text": str(domain_text) if domain_text else None, "max_new_tokens": max_new_tokens,
            "policy": dataclasses.asdict(policy), "dtype": options.dtype}


def preflight(base: str, adapter: str | None = None, merged: str | None = None, prompts=None,
              domain_text: str | Path | None = None, out: str | Path | None = None, policy: PreflightPolicy | dict | None = None,
              max_new_tokens: int = 32, options=None, progress=None, merge_in_memory: str | None = None,
              **load_overrides) -> PreflightResult:
    """Preflight an adapter and/or a merged checkpoint against its base (see the module
    docstring). Inputs are validated before any model loads; ``out`` (a new directory, or a
    crosspatch run directory to add a section to its reports) receives ``preflight.json``,
    ``preflight.md`` and ``preflight.html``; an ``out`` that already holds this preflight of the
    same inputs is read back without loading anything. ``merge_in_memory`` ("float32",
    "bfloat16", "float16"; with ``adapter`` and no ``merged``): merge the adapter with PEFT
    (``merge_and_unload`` on a copy) and round the merged weights to that dtype, to see what such
    a merge would compute before writing one (holds a second copy of the model)."""
    from ..execution import load_models
    from ..models.adapters import check_adapter_files
    from ..models.loading import LoadOptions, validate_load_options
    from ..models.paths import check_model_path

    policy = policy if isinstance(policy, PreflightPolicy) else PreflightPolicy.from_dict(policy)
    options = LoadOptions.with_overrides(options, **load_overrides)
    validate_load_options(options)
    if adapter is None and merged is None:
        raise OptionError("preflight needs --adapter and/or --merged (a descendant to check against --base)")
    if merge_in_memory is not None:
        from ..models.loading import DTYPE_ALIASES, DTYPES

        merge_in_memory = DTYPE_ALIASES.get(str(merge_in_memory).lower(), str(merge_in_memory).lower())
        if adapter is None or merged is not None:
            raise OptionError("--merge-in-memory merges --adapter in memory: give --adapter and no --merged")
        if merge_in_memory not in DTYPES:
            raise OptionError(f"--merge-in-memory must be one of {', '.join(DTYPES)}, not {merge_in_memory!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    check_model_path(str(base), "base")
    if adapter is not None:
        check_model_path(str(adapter), "tuned", adapter=True)
        check_adapter_files(str(adapter), options.allow_pickle)
    if merged is not None:
        check_model_path(str(merged), "--merged")
    prompt_ids, texts, source = _prompt_texts(prompts)
    domain = read_domain_text(domain_text) if domain_text is not None else None
    inputs = preflight_inputs(base, adapter, merged, prompts, domain_text, max_new_tokens, policy, options)
    if merge_in_memory is not None:
        inputs["merge_in_memory"] = merge_in_memory
    from .output import finished_document, fingerprint_of

    stored = finished_document(out, KIND, inputs, allow_run_dir=True)
    if stored is not None:
        return PreflightResult(stored, Path(out))

    from .output import stages

    descendants = int(adapter is not None) + int(merged is not None or merge_in_memory is not None)
    say = stages(1 + int(merge_in_memory is not None) + 1 + descendants + 1 + int(domain is not None), progress)
    say("loading models")
    if merge_in_memory is not None:
        options.residency = "adapter"  # the in-memory merge is a copy of the one resident PEFT model
    models = load_models(str(base), tuned={"merged": str(merged)} if merged else None,
                         adapters={"adapter": str(adapter)} if adapter else None, options=options)
    if merge_in_memory is not None:
        say(f"merging the adapter in memory ({merge_in_memory})")
        _add_in_memory_merge(models, merge_in_memory)
        merged = f"<in memory: {merge_in_memory}>"
    roles = ["base"] + (["adapter"] if adapter else []) + (["merged"] if merged else [])
    tokenizer = models.tokenizer
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    empty = [pid for pid, ids in zip(prompt_ids, encoded) if not ids]
    if empty:
        raise PromptFileError(f"prompt(s) {', '.join(empty[:3])} tokenize to nothing")

    from ..execution.search import greedy_rollout

    outputs = {}
    for role in roles:
        say(f"generating: {role}")
        with models.use(role) as handle:
            outputs[role] = greedy_rollout(handle, encoded, max_new_tokens, models)
    reference = "adapter" if adapter else "merged"
    sequences = [p + o for p, o in zip(encoded, outputs[reference])]
    real = models.real_vocab
    agreements = {pair: Agreement() for pair in (("base", "adapter"), ("base", "merged"), ("adapter", "merged"))
                  if pair[0] in roles and pair[1] in roles}
    divergence_at = _first_divergences(outputs["adapter"], outputs["merged"]) if adapter and merged else []
    divergences = []
    precision = "half" if merge_in_memory in ("bfloat16", "float16") else \
        _precision(options.dtype, merged if merge_in_memory is None else None)
    tolerances = policy.tolerances(precision)
    vocab = real.mask.numel()
    say("comparing logits")
    for chunk in _chunks(sequences, vocab):
        seqs = [sequences[i] for i in chunk]
        logits = {role: _logits(models, role, seqs) for role in roles}
        for k, i in enumerate(chunk):
            start = len(encoded[i]) - 1  # the position predicting the first generated token
            mask = real.for_rows(logits["base"][k].shape[-1])
            for (a, b), agreement in agreements.items():
                agreement.add(logits[a][k][start:], logits[b][k][start:], mask)
            if divergence_at and divergence_at[i] is not None:
                pos = divergence_at[i]
                ad_row, m_row = logits["adapter"][k][start + pos], logits["merged"][k][start + pos]
                t_ad = outputs["adapter"][i][pos] if pos < len(outputs["adapter"][i]) else None
                t_m = outputs["merged"][i][pos] if pos < len(outputs["merged"][i]) else None
                if t_ad is None or t_m is None:  # one decode ended at the budget: not a disagreement of tokens
                    continue
                ad_margin, m_margin = float(ad_row[t_ad] - ad_row[t_m]), float(m_row[t_m] - m_row[t_ad])
                divergences.append({
                    "prompt": prompt_ids[i], "position": pos, "adapter_token": tokenizer.decode([t_ad]),
                    "merged_token": tokenizer.decode([t_m]), "adapter_margin": ad_margin, "merged_margin": m_margin,
                    "confident": ad_margin + m_margin > 2 * tolerances["max_abs_logit_diff"]})

    checks: list[Check] = []
    if adapter:
        with models.use("adapter") as handle:
            weights = adapter_weight_report(handle.module, handle.adapter_name or "default")
        settings = (models.provenance.get("adapter") or models.provenance.get("descendants", {}).get("adapter") or {}).get("settings") or {}
        weights["bias"] = settings.get("bias")
        weights["target_modules"] = settings.get("target_modules")
        targets = settings.get("target_modules")
        if isinstance(targets, list) and weights["modules"]:
            leaves = {r["module"].rsplit(".", 1)[-1] for r in weights["modules"]}
            weights["unmatched_targets"] = sorted(t for t in targets if t not in leaves)
        changed = sum(a != b for a, b in zip(outputs["base"], outputs["adapter"]))
        checks.append(_changes_check("adapter-active", "adapter", agreements[("base", "adapter")].numbers(), changed,
                                     len(encoded), policy, weights))
    if merged:
        changed = sum(a != b for a, b in zip(outputs["base"], outputs["merged"]))
        checks.append(_changes_check("merged-changes", "merged checkpoint", agreements[("base", "merged")].numbers(),
                                     changed, len(encoded), policy, None))
    if adapter and merged:
        checks.append(_merge_check(agreements[("adapter", "merged")].numbers(), divergences, tolerances, precision, policy))
    checks.append(_health_check(outputs, models, roles, policy))
    if domain is not None:
        say("domain text")
        checks.append(_domain_check(models, roles, domain, policy))
    else:
        checks.append(Check("domain-learning", "skip", "no --domain-text given"))

    document = {
        "schema_version": SCHEMA, "fingerprint": fingerprint_of(inputs), "inputs": inputs,
        "passed": not any(c.status == "fail" for c in checks),
        "checks": [dataclasses.asdict(c) for c in checks],
        "prompts": {"source": source, "count": len(encoded)},
        "generations": [{"prompt": pid, "text": text, **{role: tokenizer.decode(outputs[role][i], skip_special_tokens=False)
                                                          for role in roles}}
                        for i, (pid, text) in enumerate(zip(prompt_ids, texts))],
        "warnings": list(models.warnings),
    }
    models.release()
    if out is not None:
        write_preflight(out, document)
    return PreflightResult(document, Path(out) if out is not None else None)


def _add_in_memory_merge(models, dtype: str) -> None:
    """A ``merged`` role: the adapter merged into a copy of the base with PEFT, its weights
    rounded to ``dtype`` (then computed in the load dtype, as a saved merge would be)."""
    import copy

    from ..models.forward import ModelHandle
    from ..models.loading import DTYPES

    with models.use("adapter") as handle:
        peft_model = copy.deepcopy(handle.module)
        peft_model.set_adapter(handle.adapter_name)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        for parameter in merged.parameters():
            parameter.copy_(parameter.to(DTYPES[dtype]).to(parameter.dtype))
    merged.eval()
    models.handles["merged"] = ModelHandle("merged", merged)
    models.roles = (*models.roles, "merged")
    models.tokenizers["merged"] = models.tokenizers["adapter"]


def _health_check(outputs: dict, models, roles: list[str], policy: PreflightPolicy) -> Check:
    rates = {role: generation_health(outputs[role], models.tokenizers[role], models.eos_ids, policy)["rates"] for role in roles}
    limits = {"empty_rate": policy.max_empty_rate, "loop_rate": policy.max_loop_rate,
              "special_leak_rate": policy.max_special_leak_rate}
    failures = [f"{role}: {key.removesuffix('_rate').replace('_', ' ')} on {rates[role][key]:.0%} of prompts "
                f"(base {rates['base'][key]:.0%}, allowed {limit:.0%})"
                for role in roles[1:] for key, limit in limits.items()
                if rates[role][key] > limit and rates[role][key] > rates["base"][key]]
    no_eos = [role for role in roles[1:] if rates[role]["no_eos_rate"] > rates["base"]["no_eos_rate"]]
    table = {"header": ["model", "empty", "repetition loop", "no EOS in budget", "special tokens leak"],
             "rows": [[role] + [f"{rates[role][k]:.0%}" for k in ("empty_rate", "loop_rate", "no_eos_rate",
                                                                   "special_leak_rate")] for role in roles]}
    if failures:
        return Check("generation-health", "fail", "generation is unhealthy: " + "; ".join(failures), failures,
                     {"rates": rates}, table)
    status = "warn" if no_eos else "pass"
    summary = "no descendant generates worse than the base (empty, loops, special tokens)"
    if no_eos:
        summary += f"; {', '.join(no_eos)} reach(es) EOS within the budget less often than the base"
    return Check("generation-health", status, summary, [], {"rates": rates}, table)


def _domain_check(models, roles: list[str], texts: list[str], policy: PreflightPolicy) -> Check:
    tokenizer = models.tokenizer
    sequences = [tokenizer(t, add_special_tokens=True)["input_ids"][:1024] for t in texts]
    sequences = [s for s in sequences if len(s) > 1]
    nll = {role: domain_nll(models, role, sequences)[0] for role in roles}
    tokens = sum(len(s) - 1 for s in sequences)
    worse = [role for role in roles[1:] if not nll[role] < nll["base"]]
    table = {"header": ["model", "NLL per token", "vs base"],
             "rows": [[role, f"{nll[role]:.4f}", "—" if role == "base" else f"{nll[role] - nll['base']:+.4f}"]
                      for role in roles]}
    numbers = {"nll": nll, "tokens": tokens, "texts": len(sequences)}
    if worse:
        status = "fail" if policy.require_domain_gain else "warn"
        return Check("domain-learning", status, f"{', '.join(worse)} do(es) not lower the NLL of the domain text "
                     f"below the base's ({nll['base']:.4f}): did the fine-tune learn its domain?", [], numbers, table)
    return Check("domain-learning", "pass", "every descendant lowers the per-token NLL of the domain text "
                 f"(base {nll['base']:.4f})", [], numbers, table)


# -- rendering ---------------------------------------------------------------------------------

def preflight_sections(document: dict, generations: int = 20) -> list[Section]:
    """The sections of a preflight page (also the run report's section)."""
    checks = document["checks"]
    overview = Section("Checks", [], [Table(["check", "status", "finding"],
                                            [[c["name"], c["status"], c["summary"]] for c in checks])])
    sections = [overview]
    for c in checks:
        if c.get("table") and c["table"]["rows"]:
            sections.append(Section(c["name"], [c["summary"]] + [f"cause: {x}" for x in c.get("causes") or []],
                                    [Table(c["table"]["header"], [[str(x) for x in r] for r in c["table"]["rows"]])]))
    gens = document.get("generations") or []
    if gens:
        roles = [k for k in gens[0] if k not in ("prompt", "text")]
        rows = [[g["prompt"], g["text"][:200]] + [g[r][:300] for r in roles] for g in gens[:generations]]
        sections.append(Section("Greedy generations", [f"first {min(len(gens), generations)} of {len(gens)} prompts"],
                                [Table(["prompt", "text"] + roles, rows)]))
    return sections


def write_preflight(out: str | Path, document: dict) -> None:
    from .output import write_outputs

    inputs = document["inputs"]
    verdict = "PASS" if document["passed"] else "FAIL"
    intro = [f"{verdict}: base {inputs['base']}" + (f", adapter {inputs['adapter']}" if inputs["adapter"] else "")
             + (f", merged {inputs['merged']}" if inputs["merged"] else "")
             + f"; {document['prompts']['count']} prompts ({document['prompts']['source']}), "
             f"{inputs['max_new_tokens']} new tokens, {inputs['dtype']}."]
    write_outputs(out, KIND, document, "crosspatch preflight", intro, preflight_sections(document))
    from ..store import RunStore

    store = RunStore(Path(out))
    if store.is_run() and (Path(out) / "summary.json").exists():
        from ..runner.finished import resummarize

        with store.lock():
            resummarize(store)
