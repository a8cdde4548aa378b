"""A prompt's ``image`` field in the forms Hugging Face data holds it.

A prompt file names its image by path. A ``datasets.Dataset`` with an ``Image`` column, a dataset
directory saved with ``save_to_disk`` and a Parquet file written by ``datasets`` hold the image
itself: a PIL image, or ``{"bytes": ..., "path": ...}`` (the undecoded form; ``bytes`` None when
the image stayed a file). An image held in a row is written once to crosspatch's image cache
(``images/<sha256>.<format>`` under ``$CROSSPATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/crosspatch``,
else ``~/.cache/crosspatch``; the temporary directory when the cache is off), named by the sha256
of its bytes, and the prompt names that file: every later step (the run's records, a resumed run,
``consequence`` and ``features`` reading the run's prompts again) reads an image by its path, and
the same image always gets the same path. A PIL image is stored as PNG (lossless: the processor
reads the same pixels); encoded bytes are stored as they are."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from ..errors import PromptFileError

__all__ = ["image_cache_dir", "image_field_path"]


def image_cache_dir() -> Path:
    """Where images held in rows are written (see the module's docstring; the root is the one
    ``crosspatch.models.digests`` keeps its digests in, which this layer cannot import)."""
    given = os.environ.get("CROSSPATCH_CACHE_DIR")
    if given is not None:
        root = Path(given).expanduser() if given.strip() else Path(tempfile.gettempdir()) / "crosspatch"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path("~").expanduser() / ".cache") / "crosspatch"
    return root / "images"


def image_field_path(value, where: str) -> str | None:
    """``value`` of an ``image`` field as a path (a string): a path as given (``str`` or
    ``os.PathLike``), a datasets ``{"bytes", "path"}`` value (its path where it holds no bytes),
    or an image held in the row (a PIL image, encoded bytes) written to the image cache; a list of
    one such image (an ``images`` column) is that image. None for datasets' empty image
    (``{"bytes": None, "path": None}``). Anything else, or bytes that are no image, is a
    :class:`PromptFileError` naming the row (``where``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        data, path = value.get("bytes"), value.get("path")
        if data:
            return _cached(bytes(data), where)
        if path is None:
            return None
        return path if isinstance(path, str) else image_field_path(path, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _cached(bytes(value), where)
    if isinstance(value, (list, tuple)):  # an ``images`` column (TRL's and many VLM sets'): one image per prompt
        if len(value) == 1:
            return image_field_path(value[0], where)
        raise PromptFileError(f"{where}: field 'image' holds {len(value)} images; crosspatch runs one image per "
                              "prompt (split such a row into one prompt per image)" if value else
                              f"{where}: field 'image' is an empty list: give the prompt's image, or no 'image' field")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - transformers' image processors need Pillow
        Image = None
    if Image is not None and isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return _cached(buffer.getvalue(), where)
    raise PromptFileError(f"{where}: field 'image' must be the path of an image file, an image (PIL), its encoded bytes "
                          f"or a datasets Image value, not {type(value).__name__}")


def _cached(data: bytes, where: str) -> str:
    """The image cache's file holding ``data`` (written once, whole: a reader never sees half a
    file); bytes PIL cannot open are a :class:`PromptFileError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "img").lower()
    except Image.DecompressionBombError as exc:  # (more pixels than PIL opens: a decompression bomb)
        raise PromptFileError(f"{where}: field 'image' holds an image PIL refuses to open ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError):
        raise PromptFileError(f"{where}: field 'image' holds {len(data)} bytes that are not an image PIL can read "
                              f"(they start {data[:8]!r})") from None
    path = image_cache_dir() / f"{hashlib.sha256(data).hexdigest()}.{kind}"
    if path.is_file() and path.stat().st_size == len(data):
        return str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        raise PromptFileError(f"{where}: the image held in field 'image' cannot be written to {path.parent} ({exc}); "
                              "set CROSSPATCH_CACHE_DIR to a writable directory") from None
    return str(path)
