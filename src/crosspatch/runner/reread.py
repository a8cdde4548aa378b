"""A finished run's prompts read again as the run read them, for the commands that work on its
events afterwards (``consequence``, ``features``): their token ids from the recorded tokenizers and
chat template, and the images of image prompts, which a run directory keeps only as paths."""

from __future__ import annotations

from ..errors import CrosspatchError
from .finished import load_request, recorded_load_options

__all__ = ["image_prompts_of_run", "prompt_ids_as_run", "register_run_images"]


def prompt_ids_as_run(config: dict, prompts: list) -> dict[str, list[int]]:
    """The token ids the run fed both models for each text prompt of ``prompts`` (its chat template
    and tokenizers as recorded; image prompts are left out), read from the tokenizers alone."""
    from .prepare import check_prompt_texts

    base, tuned, adapters, options = load_request(config)
    opts = recorded_load_options(options)
    descendant = [(path, False) for path in (tuned or {}).values()] + [(path, True) for path in (adapters or {}).values()]
    return check_prompt_texts(base, descendant, prompts, opts, bool(config["options"].get("chat_template")))


def image_prompts_of_run(config: dict, events: list, prompts: list | None = None,
                         token: int | None = None) -> tuple[list | None, dict[str, list[int]]]:
    """``(prompts, needed)``: the prompts to take a finished run's images from, and the prompt ids
    whose events hold image tokens (``token``; by default read from a local base's config.json,
    before any model loads) with the tokens the run read for each. A run directory keeps only
    the paths of its images: they come from ``prompts`` (the file a command was given), else from
    the run's own prompt file, read again and checked against the run's sha256 of its prompts. A
    prompt file or image that cannot be found is a named error."""
    from ..errors import PromptImageError
    from ..inputs.prompts import load_prompts, prompts_digest
    from ..models.paths import local_config

    if token is None:
        base = local_config(load_request(config)[0])
        found = base.get("image_token_id", base.get("image_token_index")) if base.get("vision_config") else None
        token = found if isinstance(found, int) and not isinstance(found, bool) else None
    needed = {} if token is None else {e.prompt_id: list(e.prefix_ids[: e.prompt_len]) for e in events
                                       if token in e.prefix_ids[: e.prompt_len]}
    if not needed:
        return prompts, {}
    if prompts is None:
        recorded = config.get("prompts") or {}
        source = recorded.get("source")
        try:
            prompts = load_prompts(source) if source and source != "-" else None
        except (OSError, CrosspatchError):
            prompts = None
        if prompts is None or prompts_digest(prompts) != recorded.get("sha256"):
            raise PromptImageError(
                f"this run's events hold images, which a run directory keeps only as paths in its prompt file: "
                f"{source or 'the prompt file'} (a relative path is read from the current directory) is gone or no "
                "longer the run's (its sha256 differs). Put the run's prompt file and images back where they were, "
                "or run again")
    by_id = {p.id: p for p in prompts}
    lacking = [i for i in needed if not (i in by_id and by_id[i].metadata.get("image"))]
    if lacking:
        raise PromptImageError(f"the events of prompt(s) {', '.join(map(repr, lacking[:5]))} hold image tokens, but the "
                               "prompts given have no image for them: give the run's own prompts, images included")
    return prompts, needed


def register_run_images(models, config: dict, events: list, prompts: list | None = None) -> None:
    """The images of a finished run's image prompts (:func:`image_prompts_of_run`) registered again
    for passes over ``events``; each prompt is read as the run read it and must give its event's
    tokens (else a :class:`PromptSetMismatchError`), before any pass."""
    from ..errors import PromptSetMismatchError
    from .config import RunConfig
    from .prepare import prompt_token_ids

    token = models.image_token_id
    if token is None:
        return
    prompts, needed = image_prompts_of_run(config, events, prompts, token)
    if not needed or prompts is None:
        return
    by_id = {p.id: p for p in prompts}
    # as the run read them (its chat template, the scored descendant's processor; images run locally)
    reading = RunConfig(chat_template=bool(config["options"].get("chat_template")), tuned=models.roles[1])
    ids = prompt_token_ids(models, [by_id[i] for i in needed], models.roles[1], reading)
    differ = [i for i, got in zip(needed, ids) if got != needed[i]]
    if differ:
        raise PromptSetMismatchError(f"image prompt(s) {', '.join(map(repr, differ[:5]))} are not the prompts the run "
                                     "scored under those ids (their tokens differ from the run's events)")
