"""Prompt rows given as chats: ``messages``, a list of ``{"role", "content"}`` turns as Hugging
Face chat datasets hold them, read and checked here (:func:`chat_messages`), rendered by the
descendant's chat template in a run (``runner.prepare.render_chat``), refused where raw text is
fed (:func:`check_chat_rows`)."""

from __future__ import annotations

import json

from ..errors import PromptFileError

# the roles a chat row may hold (what chat templates know: ``ipython`` is Llama 3's tool-output
# role, ``function`` the older name of ``tool``); the model answers the last turn
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython", "function")


def _plain_list(value):
    """A Parquet list cell (a numpy array) as the list it holds; anything else as it is."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (list, dict)) else value


# where a chat turn's image part stood (TRL's and the processors' ``{"type": "image"}``): the model's own
# placeholder is put there when the chat is rendered (:func:`image_chat`); U+FFFC, "object replacement"
IMAGE_PART = "\ufffc"


def _content_text(content, where: str, k: int) -> str:
    """A turn's content as text: a string, or a list of parts (``[{"type": "text", "text": ...},
    {"type": "image"}]``, the form multimodal processors, TRL and newer datasets use) joined as
    templates join them, with nothing between, an image part kept as :data:`IMAGE_PART` (the
    image itself is the row's ``image`` field). Any other part is refused."""
    if isinstance(content, str):
        return content
    content = _plain_list(content)
    if isinstance(content, list) and content and all(isinstance(part, dict) for part in content):
        kinds = [part.get("type", "text" if "text" in part else None) for part in content]
        texts = []
        for kind, part in zip(kinds, content):
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image" and not any(part.get(key) for key in ("url", "image", "path", "image_url")):
                texts.append(IMAGE_PART)
            else:
                raise PromptFileError(f"{where}: messages[{k}] holds a {kind!r} part" + (
                    " naming its image: give the image with the row's 'image' field and leave the part as "
                    "{\"type\": \"image\"}" if kind == "image" else
                    "; a chat's parts must be text or {\"type\": \"image\"} (the image in the row's 'image' field)"))
        return "".join(texts)
    raise PromptFileError(f"{where}: messages[{k}]'s content must be text (or a list of text and image parts), not "
                          f"{type(content).__name__}")


def image_chat(messages: list[dict], placeholder: str) -> tuple[list[dict], list[dict]]:
    """A chat of an image prompt, ready for a chat template, in two forms: with the image as a
    ``{"type": "image"}`` part where it stood (the form multimodal templates render their own way),
    and as text with ``placeholder`` (the processor's image text) there. An image the chat does not
    place (no image part, no placeholder written in its text) goes first in the last user turn,
    as processors place an image given beside the text."""
    turns = [dict(t) for t in messages]
    if not any(IMAGE_PART in t["content"] or placeholder in t["content"] for t in turns):
        last = max(k for k, t in enumerate(turns) if t["role"] == "user")
        turns[last]["content"] = IMAGE_PART + turns[last]["content"]
    with_parts = []
    for t in turns:
        pieces = t["content"].split(IMAGE_PART)
        if len(pieces) == 1:
            with_parts.append(t)
            continue
        parts = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
        for piece in pieces[1:]:
            parts += [{"type": "image"}] + ([{"type": "text", "text": piece}] if piece else [])
        with_parts.append({**t, "content": parts})
    as_text = [{**t, "content": t["content"].replace(IMAGE_PART, placeholder)} for t in turns]
    return with_parts, as_text


def _turn_list(value, name: str, where: str, what: str) -> list:
    """A chat field's turns: a list (JSON text in a CSV or Parquet cell, or a Parquet list cell,
    read as one), non-empty; else a PromptFileError saying it must be a non-empty list of ``what``."""
    if isinstance(value, str):  # CSV/Parquet cells hold JSON text
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:  # (invalid, nested too deeply, a number too long to read)
            raise PromptFileError(f"{where}: field '{name}' is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    value = _plain_list(value)
    if not isinstance(value, list) or not value:
        raise PromptFileError(f"{where}: field '{name}' must be a non-empty list of {what}")
    return value


# ShareGPT's speaker names (``conversations``: ``[{"from", "value"}]``, as Axolotl and LLaMA-Factory
# datasets hold chats) -> chat roles (a function_call turn is the assistant calling a tool, an observation
# the tool's answer)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "tool": "tool", "observation": "tool", "function": "function", "function_call": "assistant"}


def with_messages(row: dict, where: str) -> dict:
    """``row`` with a ShareGPT chat (``conversations``, turns ``{"from", "value"}`` or ``{"role",
    "content"}``) given as ``messages``, the form :func:`chat_messages` reads; other rows as they
    are. A row giving both is refused (which one is the chat?)."""
    def given(value) -> bool:  # (a table's empty cell is None or NaN: that row gives no chat there)
        return value is not None and not (isinstance(value, float) and value != value)

    if "conversations" not in row:
        return row
    turns, rest = row["conversations"], {k: v for k, v in row.items() if k != "conversations"}
    if not given(turns):
        return rest
    if given(row.get("messages")):
        raise PromptFileError(f"{where}: give the chat as 'messages' or 'conversations', not both")
    turns = _turn_list(turns, "conversations", where, '{"from", "value"} turns (a ShareGPT chat)')
    converted = []
    for k, turn in enumerate(turns):
        if isinstance(turn, dict) and "from" in turn and "role" not in turn:
            if turn["from"] not in SHAREGPT_ROLES:
                raise PromptFileError(f"{where}: conversations[{k}] is from {turn['from']!r}; ShareGPT speakers "
                                      f"are {', '.join(SHAREGPT_ROLES)}")
            turn = {"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")}
        converted.append(turn)
    return rest | {"messages": converted}


def chat_messages(value, where: str) -> tuple:
    """A row's ``messages``: a non-empty list of ``{"role", "content"}`` objects (JSON text in a
    CSV or Parquet cell) whose roles are chat roles and whose last turn is not the assistant's
    (the models answer it), each content a string; else a PromptFileError naming the turn (the
    text itself is checked with the row's other fields)."""
    value = _turn_list(value, "messages", where, '{"role", "content"} objects (a chat)')
    turns = []
    for k, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
            raise PromptFileError(f"{where}: messages[{k}] must be an object with 'role' and 'content'")
        if turn["role"] not in CHAT_ROLES:
            raise PromptFileError(f"{where}: messages[{k}] has role {turn['role']!r}; a chat's roles are "
                                  f"{', '.join(CHAT_ROLES)}")
        turns.append({"role": turn["role"], "content": _content_text(turn["content"], where, k)})
    if turns[-1]["role"] == "assistant":
        raise PromptFileError(f"{where}: the chat's last turn is the assistant's; it must end with the turn the models "
                              "answer (a user turn): for an SFT set's rows, drop the reference answer (messages[:-1]) "
                              "before giving them as prompts")
    if (images := sum(t["content"].count(IMAGE_PART) for t in turns)) > 1:
        raise PromptFileError(f"{where}: the chat holds {images} image parts; crosspatch runs one image per prompt")
    users = [t["content"] for t in turns if t["role"] == "user"]
    if not users or not users[-1].strip():
        raise PromptFileError(f"{where}: the chat has no user turn with text")
    return tuple(turns)


def check_chat_rows(prompts: list, chat_template: bool, what: str = "the run",
                    fix: str = "add --chat-template to render them with the descendant's chat template") -> None:
    """``prompts`` (:class:`~crosspatch.inputs.prompts.Prompt`) given as a chat (``messages``)
    are rendered by a chat template: where ``what`` feeds raw text (``chat_template`` False)
    they are a PromptFileError saying how to ``fix`` it, never fed as their last turn."""
    chats = [p.id for p in prompts if p.messages]
    if chats and not chat_template:
        raise PromptFileError(f"prompt(s) {', '.join(chats[:5])} are chats ('messages'): {what} feeds raw text; {fix}")
