"""PEFT adapters of a model set: loading them onto a base (each a named adapter, switched per
role), the named error for an adapter that does not fit its base, and the tokenizer a descendant
brings (its own when it ships one, else the base's)."""

from __future__ import annotations

import re
import warnings as warnings_module
from pathlib import Path

from ..errors import CrosspatchError, ModelLoadError, first_line
from ..models.adapters import adapter_settings, vocabulary_sizes_text
from ..models.loading import LoadOptions, load_tokenizer, quiet_loading
from .roles import BASE


def adapter_load_error(path: str, base: str, exc: Exception) -> ModelLoadError:
    """A named error for an adapter that does not fit its base: the first mismatching module and
    both shapes when PEFT reports a size mismatch."""

    from ..errors import AdapterShapeMismatchError

    text = str(exc)
    m = re.search(r"size mismatch for ([\w.]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) from "
                  r"checkpoint, the shape in current model is (torch\.Size\(\[[^\]]*\]\))", text)
    if m:
        name, saved, built = m.group(1), _dims(m.group(2)), _dims(m.group(3))
        rank_dim = 0 if ".lora_A." in name else 1 if ".lora_B." in name else None
        if rank_dim is not None and len(saved) == len(built) == 2 and saved[1 - rank_dim] == built[1 - rank_dim]:
            return AdapterShapeMismatchError(
                f"adapter {path} does not match its own adapter_config.json: {name} has rank {saved[rank_dim]} in "
                f"its weights but the configuration (r, rank_pattern) gives rank {built[rank_dim]}; save the adapter "
                "again with PEFT's save_pretrained, or correct r")
        return AdapterShapeMismatchError(
            f"adapter {path} does not fit base {base}: {name} has shape {m.group(2)} in the adapter but "
            f"{m.group(3)} in the base model; was it trained on another base?")
    return ModelLoadError(f"could not load adapter {path} onto {base} (its adapter_config.json and weights as PEFT "
                          f"builds them): {type(exc).__name__}: {first_line(exc, 300)}")


def _dims(shape: str) -> list[int]:
    """The sizes of a printed ``torch.Size([a, b])``."""
    return [int(x) for x in re.findall(r"\d+", shape)]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def descendant_tokenizer(path: str, options: LoadOptions, base_tokenizer, warnings: list[str] | None = None,
                         adapter: bool = False):
    """A descendant's own tokenizer where it has one, else the base's: a local directory without
    tokenizer files (an adapter, or a checkpoint saved without them, as
    ``merge_and_unload().save_pretrained()`` leaves it; said in ``warnings`` when given), or a
    hub adapter whose repository has none."""
    root = Path(path).expanduser()
    if root.is_dir():
        own = any((root / name).exists() for name in TOKENIZER_FILES)
    else:
        own = not adapter or _hub_has_tokenizer(path)
    if own:
        return load_tokenizer(path, options)
    if warnings is not None:
        warnings.append(f"{path} has no tokenizer files: it is read with the base's tokenizer")
    return base_tokenizer


def _hub_has_tokenizer(repo: str) -> bool:
    """Whether a hub repository holds a tokenizer (asked of the cache, then of the Hub if online)."""
    from huggingface_hub import file_exists, try_to_load_from_cache

    from ..models.paths import hub_reachable, hub_target

    repo, revision = hub_target(repo, None)  # (REPO@REVISION: at that revision)
    if any(isinstance(try_to_load_from_cache(repo, name, revision=revision), str) for name in TOKENIZER_FILES):
        return True
    if not hub_reachable():
        return False
    try:
        return any(file_exists(repo, name, revision=revision) for name in ("tokenizer_config.json", "tokenizer.json"))
    except Exception:  # offline, gated or unreachable: nothing more to learn; PEFT loads the weights
        return False


def _load_adapters(base_model, base: str, adapter_roles: dict[str, str], options: LoadOptions,
                   tokenizers: dict | None, record: dict | None, warnings: list[str], shares_base: bool = False):
    """A PEFT model holding every adapter of ``adapter_roles`` on ``base_model`` (``shares_base``:
    the base role reads this same copy, adapter switched off)."""
    from peft import PeftModel

    rows = {role: n for role, path in adapter_roles.items() if (n := _fit_vocabulary(base_model, path)) is not None}
    if len(set(rows.values())) > 1:  # (the base grown to the largest; with no residency asked for: sequential)
        raise ModelLoadError(f"{vocabulary_sizes_text(rows)} cannot share one copy of the base {base}: run them with "
                             "--residency sequential (each model loads on its own)")
    model = None
    for role, path in adapter_roles.items():
        settings, adapter_warnings = adapter_settings(path, base, shares_base or len(adapter_roles) > 1)
        warnings += [w if len(adapter_roles) == 1 else f"{role}: {w}" for w in adapter_warnings]
        try:
            with quiet_loading(options.verbose), warnings_module.catch_warnings(record=True) as caught:
                warnings_module.simplefilter("always")
                if model is None:
                    model = PeftModel.from_pretrained(base_model, path, adapter_name=role, is_trainable=False)
                    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
                else:
                    result = model.load_adapter(path, adapter_name=role, is_trainable=False)
                    missing = list(getattr(result, "missing_keys", None) or [])
        except (CrosspatchError, MemoryError):
            raise
        except Exception as exc:  # (PEFT builds the layers from the config's values: any of its errors is the adapter's)
            raise adapter_load_error(path, base, exc) from None
        if missing:  # PEFT leaves them at their initial values (LoRA B: zero) and only warns
            raise ModelLoadError(f"adapter {path} lacks weights its adapter_config.json declares: "
                                 f"{'; '.join(missing)[:400]}")
        if tokenizers is not None and role not in tokenizers:  # (load_models reads every tokenizer first)
            tokenizers[role] = descendant_tokenizer(path, options, tokenizers[BASE], adapter=True)
        if record is not None:
            target = record["adapter"] if "adapter" in record else record["descendants"][role]
            target["settings"] = settings
    if model is None:
        raise ValueError("no adapter to load")  # callers pass at least one
    model.eval()
    return model


def _fit_vocabulary(model, adapter: str) -> int | None:
    """Grow ``model``'s embedding and output rows to the vocabulary ``adapter`` was trained with,
    where it holds more rows than the model: tokens added for fine-tuning (a chat format's
    ``<|im_start|>``, TRL's ``setup_chat_format``) with the embeddings saved in the adapter
    (``modules_to_save``) or adapted by LoRA, which load only onto a base resized as it was, as PEFT
    asks of its users. The new rows are zeros; no id the base's tokenizer gives reaches them, and
    the descendant's ids that the base does not share are masked from every pick (the real vocabulary).
    Returns the adapter's vocabulary rows (None where it holds no embedding or output weights)."""
    import torch

    from ..models.adapters import adapter_vocabulary_rows

    embeddings = model.get_input_embeddings()
    names = {module: name for name, module in model.named_modules()}
    modules = [names.get(embeddings), names.get(model.get_output_embeddings())]
    rows = adapter_vocabulary_rows(adapter, [m for m in modules if m])
    old = embeddings.weight.shape[0]
    if rows is None or rows <= old:
        return rows
    model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                module.weight[old:].zero_()
    return rows

