"""The weather-report model zoo: a pretrained base, its descendants (and two faulty ones), trained by crosspatch
itself (``crosspatch zoo build``) and shipped as safetensors with a manifest of hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import CrosspatchError

ZOO_NAME = "weather"
DESCENDANTS = ("it-full", "it-lora-all", "it-lora-late", "it-lora-fragile", "it-merged", "cpt", "it-units",
               "it-full-seed2")
ADAPTERS = ("it-lora-all", "it-lora-late", "it-lora-fragile", "lora-generic", "it-lora-noop")
DEMO_DESCENDANTS = ("it-full", "it-lora-all", "it-lora-late", "it-lora-fragile", "cpt", "it-units")  # --full: all
NULLS = ("lora-generic", "cpt")  # harmless fine-tunes of the base: the demo's null yardstick (docs/verdict.md)
FAULTY = ("it-lora-noop", "it-merged-broken")  # for crosspatch preflight to fail on (zoo/faults.py)
VISION = ("vl-base", "vl-it")  # the vision-language pair (zoo/vision.py): its own base and descendant


__all__ = ["ADAPTERS", "DEMO_DESCENDANTS", "DESCENDANTS", "FAULTY", "NULLS", "VISION", "ZOO_NAME", "ZooEnvironmentError",
           "ZooIntegrityError", "load_zoo_pair", "load_zoo_vision_pair", "manifest", "verify", "vision_pair_unavailable",
           "zoo_path", "zoo_prompts"]


class ZooIntegrityError(CrosspatchError):
    """A zoo file is missing or its sha256 differs from manifest.json."""


class ZooEnvironmentError(CrosspatchError):
    """The installed libraries cannot load a part of the zoo."""


def vision_pair_unavailable() -> str | None:
    """Why the vision-language pair cannot load with the installed transformers, or None. Its
    processor was saved by transformers 5, whose tokenizer and processor files transformers 4 does
    not read (the text models load under both)."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return (f"the zoo's vision-language pair was saved by transformers 5 and its processor needs transformers "
                f">= 5 (installed: {transformers.__version__}); pip install -U 'transformers>=5' (the text models "
                "of the zoo load under both)")
    return None


def zoo_path() -> Path:
    """Directory of the committed zoo inside the installed package."""
    return Path(__file__).parent / "assets" / ZOO_NAME


def manifest(root: Path | None = None) -> dict:
    root = root or zoo_path()
    path = root / "manifest.json"
    if not path.exists():
        raise ZooIntegrityError(f"no zoo at {root} (manifest.json missing); run `crosspatch zoo build`")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ZooIntegrityError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(man, dict) or not isinstance(man.get("files"), dict) or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in man["files"].items()):
        raise ZooIntegrityError(f"{path}: a manifest must be an object whose 'files' maps paths to sha256 strings")
    return man


def verify(root: Path | None = None) -> dict:
    """Check every file in the manifest against its sha256; returns the manifest."""
    root = root or zoo_path()
    man = manifest(root)
    bad = []
    for rel, digest in man["files"].items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            bad.append(f"{rel} (path outside the zoo)")
        elif not path.exists():
            bad.append(f"{rel} (missing)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(f"{rel} (sha256 differs)")
    if bad:
        raise ZooIntegrityError(f"zoo at {root} does not match its manifest: {', '.join(bad[:5])}")
    return man


def load_zoo_pair(descendant: str, root: Path | None = None, nulls: tuple[str, ...] = (), **options):
    """``load_pair`` of the zoo's base and one descendant (adapters load as PEFT adapters); with
    ``nulls``, those zoo models are loaded beside it as further roles (the null yardstick:
    ``run(..., tuned=descendant, nulls=[...])``)."""
    from ..execution import load_models, load_pair

    known = DESCENDANTS + NULLS + FAULTY
    for name in (descendant, *nulls):
        if name not in known:
            raise CrosspatchError(f"unknown zoo model {name!r}; choose from {', '.join(dict.fromkeys(known))}")
    root = root or zoo_path()
    base = str(root / "base")
    if not nulls:
        if descendant in ADAPTERS:
            return load_pair(base, adapter=str(root / descendant), **options)
        return load_pair(base, tuned=str(root / descendant), **options)
    names = [descendant, *[n for n in nulls if n != descendant]]
    return load_models(base, tuned={n: str(root / n) for n in names if n not in ADAPTERS} or None,
                       adapters={n: str(root / n) for n in names if n in ADAPTERS} or None, **options)


def load_zoo_vision_pair(root: Path | None = None, **options):
    """``load_pair`` of the zoo's vision-language pair (``vl-base`` and ``vl-it``, each with its
    processor); run it on image prompts such as ``zoo_prompts("charts")``."""
    from ..execution import load_pair

    reason = vision_pair_unavailable()
    if reason is not None:
        raise ZooEnvironmentError(reason)
    root = root or zoo_path()
    return load_pair(str(root / VISION[0]), tuned=str(root / VISION[1]), **options)


def zoo_prompts(split: str = "all", root: Path | None = None):
    """A shipped prompt set: ``all`` (instruction prompts; also ``in_distribution`` and
    ``held_out_office``, ``held_out_region``), ``raw`` (raw weather text: observation logs and narratives, as the paper feeds
    both models), ``question`` (forum-style questions), ``units`` (the narrow domain of
    ``it-units``: unit conversions and arithmetic over observation numbers) or ``charts`` (image
    prompts of the vision-language pair: a chart and the aspect to report)."""
    from ..inputs.prompts import load_prompts

    return load_prompts((root or zoo_path()) / "prompts" / f"{split}.jsonl")
