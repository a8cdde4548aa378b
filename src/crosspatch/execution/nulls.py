"""Null descendants: the yardstick of how large an interaction a harmless fine-tune produces.

A real null is a checkpoint or adapter trained like the descendant on a null task (generic text,
another seed); it is loaded as one more role (``load_models(base, tuned={"tuned": ..., "null-1":
...})``, ``--null DIR`` on the command line). Without one, :func:`with_synthetic_nulls` builds
**synthetic nulls**: for every weight the descendant changed, a delta with the same singular
values as the real ``ΔW = W_IT − W_PT`` and random singular vectors (for a LoRA, the merged
delta's spectrum, so the rank is kept), and for vectors (norms, biases) the real delta with its
coordinates permuted and signs flipped. A synthetic null perturbs the base as much as the
fine-tune did, in directions that carry no learned function: a weaker yardstick than a trained
null (it keeps the size of the change, not its statistics), documented as such.
"""

from __future__ import annotations

import copy

import torch

from ..errors import OptionError
from .in_memory import models_from_modules
from .modelset import ModelSet
from .opening import free_bytes_on

SYNTHETIC_PREFIX = "null-synthetic-"


def effective_module(models: ModelSet, role: str) -> torch.nn.Module:
    """A plain (non-PEFT) copy of ``role``'s model: a PEFT adapter merged into a copy of the base."""
    handle = models.handle(role)
    module = copy.deepcopy(handle.module)
    if handle.adapter_enabled is None:
        return module
    if handle.adapter_enabled is False:
        return module.get_base_model() if not hasattr(module, "unload") else module.unload()
    module.set_adapter(handle.adapter_name)
    for name in list(module.peft_config):
        if name != handle.adapter_name:
            module.delete_adapter(name)
    return module.merge_and_unload()


def _random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed columns


@torch.no_grad()
def synthetic_null(base: torch.nn.Module, tuned: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``base`` whose every changed weight moves by a delta with the spectrum of the real
    delta and random singular vectors (module docstring). Deterministic in ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    null = copy.deepcopy(base)
    tuned_params = dict(tuned.named_parameters())
    for name, param in null.named_parameters():
        other = tuned_params.get(name)
        if other is None or other.shape != param.shape:
            raise OptionError(f"a synthetic null needs the base's and the descendant's weights to match; {name} differs")
        delta = other.detach().to(torch.float64).cpu() - param.detach().to(torch.float64).cpu()
        if not torch.any(delta != 0):
            continue
        if not bool(torch.isfinite(delta).all()):  # (the spectrum of a NaN matrix does not converge)
            whose = "descendant's" if not bool(torch.isfinite(other).all()) else "base's"
            raise OptionError(f"a synthetic null copies the spectrum of each weight's change, and the {whose} {name} "
                              "holds NaN or infinite values: its weights are broken; fix them, or give a trained null "
                              "(--null DIR)")
        if delta.ndim == 2:
            _, s, _ = torch.linalg.svd(delta, full_matrices=False)
            keep = s > s.max() * 1e-10
            s = s[keep]
            u = _random_orthonormal(delta.shape[0], len(s), generator)
            v = _random_orthonormal(delta.shape[1], len(s), generator)
            new = (u * s) @ v.T
        else:
            flat = delta.flatten()
            perm = torch.randperm(flat.numel(), generator=generator)
            signs = torch.randint(0, 2, (flat.numel(),), generator=generator, dtype=torch.float64) * 2 - 1
            new = (flat[perm] * signs).reshape(delta.shape)
        param.add_(new.to(param.dtype).to(param.device))
    return null


def _check_room_for_nulls(models: ModelSet, count: int) -> None:
    """The nulls are built beside the models in memory, each a whole model, after a plain copy of
    the base and of every descendant: refuse, naming the sizes, a count that cannot fit (rather than
    run out of memory after minutes of building)."""
    module = models.handle(models.base).module
    param = next(module.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    copies = 1 + len(models.descendants) + count
    need = int(copies * model_bytes * 1.1)
    free = free_bytes_on(param.device)
    if free is not None and need > free:
        raise OptionError(f"{count} synthetic null(s) need ~{need / 2**30:.1f} GiB on {param.device} ({copies} copies of "
                          f"a {model_bytes / 2**30:.2f} GiB model: the nulls, and plain copies of the base and each "
                          f"descendant they are built from) but {free / 2**30:.1f} GiB is free: give fewer, or trained "
                          "nulls with --null DIR (loaded like any descendant)")


def check_synthetic_null_residency(residency: str, count: int) -> None:
    """Synthetic nulls are built from the models in memory: with one model resident at a time
    (``sequential``) they cannot be, an :class:`OptionError` (said before any weight loads when the
    residency is known from the configs)."""
    if count and residency == "sequential":
        raise OptionError("synthetic nulls are built from the models in memory: use --residency both "
                          "(or give trained nulls with --null DIR, which any residency loads)")


def with_synthetic_nulls(models: ModelSet, tuned: str, count: int, seed: int = 0) -> tuple[ModelSet, list[str]]:
    """``models`` with ``count`` synthetic nulls of ``tuned`` as extra roles
    (``null-synthetic-1``, ...); returns the new set and the null roles. The base and every role
    must be in memory (a set loaded from paths is rebuilt from its modules)."""
    if count < 1:
        return models, []
    check_synthetic_null_residency("sequential" if models.resident_role is not None else models.residency, count)
    _check_room_for_nulls(models, count)
    base = effective_module(models, models.base)
    child = effective_module(models, tuned)
    modules = {models.base: base}
    for role in models.descendants:
        modules[role] = child if role == tuned else effective_module(models, role)
    roles = [f"{SYNTHETIC_PREFIX}{k + 1}" for k in range(count)]
    for k, role in enumerate(roles):
        modules[role] = synthetic_null(base, child, seed * 1000 + k + 1)
    # a vision-language set's processors go with it (the nulls read images as the base does)
    rebuilt = models_from_modules(modules, models.tokenizer, dict(models.tokenizers),
                                  processors=models.processors_for(modules))
    old = models.provenance  # the real models keep their recorded paths and load spec (reopening a run)
    record = rebuilt.provenance
    record["base"] = old.get("base", record["base"])
    for role in models.descendants:
        entry = old.get("descendants", {}).get(role) or old.get("adapter" if "adapter" in old else "tuned")
        if entry is not None:
            record.setdefault("descendants", {})[role] = entry
    record.pop("tuned", None)
    if old.get("load_spec") or old.get("reopen_spec"):  # what reloads the real models later (not the nulls,
        record["reopen_spec"] = old.get("load_spec") or old.get("reopen_spec")  # so no Ray worker loads it)
    rebuilt.warnings = list(models.warnings) + [
        f"{count} synthetic null(s) of {tuned!r}: random singular vectors with the real delta's spectrum (a weaker "
        "yardstick than a trained null; docs/verdict.md)"]
    return rebuilt, roles
