"""How a run reads its prompts, and how the commands that work on a finished run's events read
them again: the text both models read (the prompt, or its chat rendered by the descendant's
template), token ids identical under both tokenizers, and image prompts through both models'
processors, their images registered for the passes (a run directory keeps only their paths)."""

from __future__ import annotations

import datetime
import functools

from ..errors import CrosspatchError, OptionError
from ..execution import ModelSet
from ..inputs.prompts import Prompt
from ..models.vocab import tokenize_once
from .config import RunConfig

__all__ = ["CHAT_TEMPLATE_DATE", "check_prompt_texts", "image_prompts_of_run", "prompt_token_ids", "register_run_images",
           "render_chat"]

CHAT_TEMPLATE_DATE = datetime.datetime(2025, 1, 1)
"""The date a chat template that writes today's date (Llama 3.x's system turn, Granite's, Mistral's:
transformers' ``strftime_now``) writes in a run: one fixed date, so that a prompt reads the same on
every day a run is made, resumed or sharded."""


@functools.cache
def _fixed_clock_macro() -> str:
    """A Jinja macro ``strftime_now`` writing :data:`CHAT_TEMPLATE_DATE` in the format asked (the
    strftime directives templates use): put before a template, it shadows transformers' clock (a
    template's arguments reach it as plain data, so the clock is replaced in the template itself)."""
    def written(directive: str) -> str:  # (``%-d``: glibc's day without its leading zero)
        text = CHAT_TEMPLATE_DATE.strftime(directive.replace("-", ""))
        return str(int(text)) if "-" in directive else text

    steps = "".join(f' | replace("{d}", "{written(d)}")' for d in (
        "%-d", "%-m", "%-H", "%-I", "%-M", "%d", "%m", "%Y", "%y", "%B", "%b", "%A", "%a", "%H", "%I", "%M", "%S", "%p",
        "%j", "%Z", "%z"))
    return "{%- macro strftime_now(fmt) -%}{{ fmt" + steps + " }}{%- endmacro -%}"


def _prompt_text(pair: ModelSet, prompt: Prompt, config: RunConfig) -> str:
    """The text both models read: the prompt as given, or (``chat_template``) its chat (a row's
    ``messages``, else one user turn) rendered by the descendant's chat template with the
    assistant's opening; a template that refuses the chat is a PromptFileError naming the prompt."""
    if not config.chat_template:
        return prompt.prompt
    tuned = config.tuned or pair.roles[1]
    if prompt.metadata.get("image"):
        from ..models.media import image_placeholder

        return render_image_chat(pair.tokenizers[tuned], prompt, repr(tuned), image_placeholder(pair.processor(tuned)))
    return render_chat(pair.tokenizers[tuned], prompt, repr(tuned))


def render_image_chat(tokenizer, prompt: Prompt, whose: str, placeholder: str) -> str:
    """An image prompt's chat rendered with its image where the chat puts it (an image part, the
    placeholder written in its text, else first in the last user turn: :func:`image_chat`): by the
    template with a ``{"type": "image"}`` part there, the way a multimodal template writes its
    image, where it writes ``placeholder`` (the processor's image text) once; else (a template of
    text turns) with ``placeholder`` written there."""
    from dataclasses import replace

    from ..errors import PromptFileError
    from ..inputs.chats import image_chat

    chat = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.prompt}]
    with_parts, as_text = image_chat(chat, placeholder)
    try:
        text = render_chat(tokenizer, replace(prompt, messages=tuple(with_parts)), whose)
    except PromptFileError:  # a template of text turns may fail on a list of parts: it gets text
        text = None
    if text is not None and text.count(placeholder) == 1:
        return text
    return render_chat(tokenizer, replace(prompt, messages=tuple(as_text)), whose)


def render_chat(tokenizer, prompt: Prompt, whose: str) -> str:
    """``prompt``'s chat (its ``messages``, else one user turn) rendered by ``tokenizer``'s chat
    template with the assistant's opening, its clock at :data:`CHAT_TEMPLATE_DATE`; a template
    that refuses it is a PromptFileError naming the prompt and ``whose`` template it is."""
    from ..errors import PromptFileError

    chat = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.prompt}]
    try:
        template = tokenizer.get_chat_template()
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                             chat_template=_fixed_clock_macro() + template if "strftime_now" in template
                                             else template)
    except Exception as exc:  # a template raises what it likes (jinja2's TemplateError, ValueError, ...)
        raise PromptFileError(f"prompt {prompt.id!r}: the chat template of {whose} refuses its chat "
                              f"({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(text, str):
        raise PromptFileError(f"prompt {prompt.id!r}: the chat template of {whose} rendered no text")
    return text


def check_prompt_texts(base: str, descendants: list[tuple[str, bool]], prompts: list[Prompt], options,
                       chat_template: bool) -> dict[str, list[int]]:
    """Before any model loads: every text prompt reads as the run will read it against each
    descendant (``(path, is_adapter)``, with its tokenizer: its own, else the base's) — with
    ``chat_template``, rendered by a chat template the tokenizer has — and tokenizes to the same
    ids under the base's tokenizer; else the ChatTemplateMissingError, PromptFileError or
    PromptTokenizationMismatchError the run would meet once its weights had loaded (minutes, for
    a large pair). Image prompts go through the base's processor (a local directory's), which
    expands their image into its tokens, so that their lengths are checked before the weights load
    too (and an image it refuses is named); the run checks that the descendant's agrees. Returns
    the prompts' token ids by prompt id (what the run will feed both models)."""
    from ..execution.adapters import descendant_tokenizer
    from ..models.loading import load_tokenizer
    from .checks import check_chat_template

    base_tokenizer = load_tokenizer(base, options)
    processor = _local_processor(base, options) if any(p.metadata.get("image") for p in prompts) else None
    token_ids: dict[str, list[int]] = {}
    for path, is_adapter in descendants:
        tokenizer = descendant_tokenizer(path, options, base_tokenizer, adapter=is_adapter)
        if chat_template:
            check_chat_template(tokenizer)
        for prompt in prompts:
            if prompt.metadata.get("image"):
                if processor is not None:
                    token_ids[prompt.id] = _image_prompt_ids(processor, tokenizer, prompt, repr(path), chat_template)
                continue
            text = render_chat(tokenizer, prompt, repr(path)) if chat_template else prompt.prompt
            # as prompt_token_ids reads it: a rendered chat holds its special tokens (BOS too) already
            ids = tokenize_once(base_tokenizer, tokenizer, prompt.id, text, add_special_tokens=not chat_template)
            token_ids[prompt.id] = max(token_ids.get(prompt.id, []), ids, key=len)  # (templates may differ)
    return token_ids


def _local_processor(base: str, options):
    """The base's multimodal processor when the base is a vision-language checkpoint in a local
    directory or whole in the local hub cache (read before any weight loads: configs, tokenizer and
    image settings), else None."""
    from ..models.cached import checkable
    from ..models.config_dicts import local_is_multimodal
    from ..models.loading import load_processor

    return load_processor(base, options) if local_is_multimodal(checkable(base, options.revision)) else None


def _image_prompt_ids(processor, tokenizer, prompt: Prompt, whose: str, chat_template: bool) -> list[int]:
    """An image prompt's token ids as the run will read them (its image expanded by ``processor``)."""
    from ..models.media import encode_image_prompt, image_placeholder

    text = render_image_chat(tokenizer, prompt, whose, image_placeholder(processor)) if chat_template else prompt.prompt
    return encode_image_prompt(processor, prompt.id, text, prompt.metadata["image"])[0]


def prompt_token_ids(pair: ModelSet, prompts: list[Prompt], tuned: str, config: RunConfig) -> list[list[int]]:
    """Token ids of every prompt, identical under the base's and ``tuned``'s tokenizers; an image
    prompt goes through both models' processors (which must agree) and its image is registered
    for the passes (:mod:`crosspatch.models.media`)."""
    import torch

    from ..errors import PromptImageError
    from ..models.media import encode_image_prompt

    token = pair.image_token_id
    images = [p.id for p in prompts if p.metadata.get("image")]
    if images and token is None:
        raise PromptImageError(f"prompt(s) {', '.join(images[:5])} have an image, but the base is a text-only model")
    if images and config.engine != "local":
        raise OptionError("image prompts run with the local engine (--engine local)")
    out = []
    for p in prompts:
        text = _prompt_text(pair, p, config)
        if not p.metadata.get("image"):
            # a chat template renders its special tokens (BOS too): adding them again doubles BOS
            ids = tokenize_once(pair.tokenizers[pair.base], pair.tokenizers[tuned], p.id, text,
                                add_special_tokens=not config.chat_template)
            if token is not None and token in ids:
                raise PromptImageError(f"prompt {p.id!r} holds the image placeholder but has no 'image' field")
            out.append(ids)
            continue
        processor_pt, processor_it = pair.processor(pair.base), pair.processor(tuned)
        ids, inputs = encode_image_prompt(processor_pt, p.id, text, p.metadata["image"])
        ids_it, inputs_it = (ids, inputs) if processor_it is processor_pt else \
            encode_image_prompt(processor_it, p.id, text, p.metadata["image"])
        same = ids == ids_it and inputs.keys() == inputs_it.keys() and all(
            inputs[k].shape == inputs_it[k].shape and torch.equal(inputs[k], inputs_it[k]) for k in inputs)
        if not same:
            raise PromptImageError(f"prompt {p.id!r}: the base's and {tuned!r}'s processors turn the image into "
                                   "different tokens or pixels; cross-patching needs one shared prefix")
        pair.media.register(p.id, ids, inputs)
        out.append(ids)
    return out


def image_prompts_of_run(config: dict, events: list, prompts: list | None = None, token: int | None = None,
                         base: str | None = None) -> tuple[list | None, dict[str, list[int]]]:
    """``(prompts, needed)``: the prompts to take a finished run's images from, and the prompt ids
    whose events hold image tokens (``token``; by default read from the config.json of ``base``, a
    local directory, before any model loads) with the tokens the run read for each. A run
    directory keeps only the paths of its images: they come from ``prompts`` (the file a command
    was given), else from the run's own prompt file, read again with its recorded ``--fields``
    and checked against the run's sha256 of its prompts. A prompt file or image that cannot be
    found is a named error."""
    from ..errors import PromptImageError
    from ..inputs.prompts import load_prompts, prompts_digest
    from ..models.config_dicts import local_config
    from ..models.media import image_token_id

    if token is None:
        token = image_token_id(local_config(base) if base else {})
    needed = {} if token is None else {e.prompt_id: list(e.prefix_ids[: e.prompt_len]) for e in events
                                       if token in e.prefix_ids[: e.prompt_len]}
    if not needed:
        return prompts, {}
    if prompts is None:
        recorded = config.get("prompts") or {}
        source = recorded.get("source")
        piped = source in (None, "-", "standard input")
        try:
            prompts = None if piped else load_prompts(recorded.get("path") or source, recorded.get("fields"))
        except (OSError, CrosspatchError):
            prompts = None
        if prompts is None or prompts_digest(prompts) != recorded.get("sha256"):
            named = recorded.get("path") or f"{source} (a relative path is read from the current directory)"
            where = ("its prompts were piped in, so there is no file to read them from again" if piped else
                     f"{named} is gone or no longer the run's (its sha256 differs)")
            raise PromptImageError(
                f"this run's events hold images, which a run directory keeps only as paths in its prompt file: "
                f"{where}. Put the run's prompt file and images back where they were, or run again")
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
