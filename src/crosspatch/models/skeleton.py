"""The model a local checkpoint's config.json describes, built on the meta device (no memory, a
fraction of a second): its parameters' names and shapes, which tensors are tied, and what
transformers lets a checkpoint lack or hold beyond them. The pre-load checks compare checkpoints
and adapters with it (:func:`~crosspatch.models.checks.check_weights_fit_config`,
:func:`~crosspatch.models.adapters.check_adapter_files`)."""

from __future__ import annotations

from .config_dicts import local_config

__all__ = ["Skeleton", "local_skeleton", "model_weight_shapes"]


def model_weight_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Each parameter's shape by name in the model a local checkpoint's config.json describes
    (the names PEFT's modules and transformers' loader use), built on the meta device; none for a
    hub id, a quantized checkpoint, one that ships its own code or one transformers cannot build."""
    skeleton = local_skeleton(path)
    return dict(skeleton.shapes) if skeleton is not None else {}


def local_skeleton(path: str) -> Skeleton | None:
    """The :class:`Skeleton` of a local checkpoint's config.json (cached per config's contents); None
    for a hub id, a quantized checkpoint, one that ships its own code or one transformers cannot build."""
    from .config_dicts import is_quantized

    config = local_config(path)
    if not config or "auto_map" in config or is_quantized(config):
        return None
    return _skeleton(path, _signature(path))


class Skeleton:
    """What a model built from a config holds: each parameter's shape by name, the names that share
    one tensor (a tied head), its buffers' names, and the names transformers expects to be missing
    (``ignored``) or drops as it loads (a buffer older versions saved)."""

    def __init__(self, model) -> None:
        import re

        self.name = type(model).__name__
        self.shapes: dict[str, tuple[int, ...]] = {}
        groups: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            self.shapes[name] = tuple(param.shape)
            groups.setdefault(id(param), []).append(name)
        self.tied_groups = list(groups.values())
        self.buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}  # (shapes not compared)
        # (patterns a model class lists, or holds in a set: GPT-2's, GPT-NeoX's)
        self._missing = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
        self._extra = [re.compile(p) for p in [*(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()),
                                               r"rotary_emb\.inv_freq$"]]

    def ignored(self, name: str) -> bool:
        return any(p.search(name) for p in self._missing)

    def holds(self, names) -> bool:
        """Whether every one of ``names`` is the model's, or one transformers drops as it loads."""
        return all(n in self.shapes or n in self.buffers or any(p.search(n) for p in self._extra) for n in names)

    def layers_beyond(self, names) -> dict[str, int]:
        """Of ``names`` the model does not hold, those of a numbered block (a decoder layer) past the
        ones it builds, with the number: the block's first weight name at index 0 is the model's.
        Empty unless every name it does not hold is one (a checkpoint of another layout is not)."""
        import re

        beyond = {}
        for name in names:
            if self.holds([name]):
                continue
            found = re.search(r"\.(\d+)\.", name)
            if found is None or name[:found.start()] + ".0." + name[found.end():] not in self.shapes:
                return {}
            beyond[name] = int(found.group(1))
        return beyond


def _signature(path: str) -> tuple:
    """What the skeleton of ``path`` depends on: where its config.json is and what it says."""
    import hashlib
    from pathlib import Path

    config = Path(path).expanduser() / "config.json"
    try:
        return (str(config.resolve()), hashlib.sha256(config.read_bytes()).hexdigest())
    except OSError:
        return (str(config),)


_SKELETONS: dict[tuple, Skeleton | None] = {}


def _skeleton(path: str, signature: tuple) -> Skeleton | None:
    """The model ``path``'s config.json describes, built on the meta device once per config file
    (the command line and the loader both check); None where transformers cannot build it."""
    if signature not in _SKELETONS:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        from .loading import quiet_loading

        try:  # (the meta device: accelerate's empty weights leave a tied head untied under transformers 5)
            with quiet_loading(), torch.device("meta"):
                config = AutoConfig.from_pretrained(path)
                auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None \
                    else AutoModelForCausalLM
                model = auto.from_config(config)
                model.tie_weights()  # (transformers 5.0 leaves tying on the meta device to this call)
                _SKELETONS[signature] = Skeleton(model)
        except Exception:  # an unknown or unusual model: the loader's own errors, later
            _SKELETONS[signature] = None
    return _SKELETONS[signature]
