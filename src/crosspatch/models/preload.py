"""The checks every checkpoint and adapter gets before any weight loads (:func:`check_checkpoints`),
one list that ``crosspatch run``'s (and ``compare``'s, ``lineage``'s) checks and the Python API's
:func:`~crosspatch.execution.load_models` both run: each path there and of a known kind, the model
code a checkpoint ships, pickle weights, weights that fit their config.json, an adapter whose
weights fit the base's, and each descendant's architecture, depth, width and weight layout set
against the base's."""

from __future__ import annotations

from .adapters import check_adapter_files
from .anatomy import check_supported
from .cached import check_weight_format, checkable, revision_snapshot
from .checks import check_weights_fit_config, compare_configs, compare_weight_layouts
from .config_dicts import local_config
from .loading import LoadOptions, check_custom_code
from .paths import check_model_path, looks_local

__all__ = ["check_checkpoints"]


def check_checkpoints(base: str, tuned: dict[str, str], adapters: list[str], options: LoadOptions,
                      role: str = "tuned") -> dict[str, str]:
    """Check ``base``, the checkpoints ``tuned`` (name -> path, the name used in a mismatch's
    message) and the adapter directories ``adapters``, reading only their files: named errors
    (``ModelLoadError`` and its kinds) before any weight loads. ``role`` is what the descendants are
    called in a path's message ("tuned", "lineage stage"). Returns where each checkpoint's files
    are read (path -> a local path, or a hub id's whole snapshot in the local cache, else the id:
    checked once loaded)."""
    check_model_path(base, "base", revision=options.revision)
    for path in tuned.values():
        check_model_path(path, role, revision=options.revision)
    for path in adapters:
        check_model_path(path, role, adapter=True)  # adapters load at their main revision
    # a checkpoint given as REPO@REVISION is read as that revision's snapshot where the cache holds it (a local
    # directory; not cached: checked once loaded, as a hub id is)
    local = {path: revision_snapshot(path, flag, fetch=False) for path, flag in
             [(base, "--base"), *((p, "--tuned" if role == "tuned" else role) for p in tuned.values()), *((p, "--adapter") for p in adapters)]}
    for path, where in local.items():
        if where != path:  # (the checks a local directory gets)
            check_model_path(where, "base" if path == base else role, adapter=path in adapters and path != base)
    # a hub id's files are read from its snapshot in the local cache, when that holds the whole checkpoint
    files = {path: checkable(local[path], options.revision) for path in [base, *tuned.values()]}
    for path in adapters:
        check_adapter_files(local[path], options.allow_pickle, files[base])  # a LoRA's weights fit the base's
    for path in [base, *tuned.values()]:  # a cached hub id's (a local one's: check_model_path; not cached: once loaded)
        if not looks_local(local[path]):
            check_supported(local_config(files[path]))
    for path in [base, *tuned.values()]:  # model code a checkpoint ships is named before its model type is compared
        check_custom_code(files[path], options.trust_remote_code)
        check_weight_format(files[path], options.allow_pickle, options.revision)  # (a hub id's: its cached snapshot)
        check_weights_fit_config(files[path])  # a weight missing, or a config.json not its weights
    for name, path in tuned.items():  # another architecture, depth or width, from the config files
        names = ("PT", "IT") if len(tuned) + len(adapters) == 1 else ("base", name)
        compare_configs(files[base], files[path], names)
        compare_weight_layouts(files[base], files[path], names)  # a descendant lacking weights, a config not its weights
    return files
