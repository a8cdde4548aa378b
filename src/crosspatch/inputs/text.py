"""Text files a user writes (prompt files, word lists, policies, domain text, merge
configurations) read as their writer meant: UTF-8, or the encoding a byte-order mark at the start
names. Windows tools write marks: Notepad's UTF-8 with one, PowerShell 5's ``>`` and Excel's
"Unicode Text" export UTF-16 LE. A mark is dropped, never read as text (a marker word read as
``"\\ufeffsure"`` would silently match nothing)."""

from __future__ import annotations

import codecs
from pathlib import Path

__all__ = ["marked_encoding", "read_file_bytes", "read_text"]

# UTF-32's marks first: UTF-32 LE's begins with UTF-16 LE's
_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
          (codecs.BOM_UTF16_BE, "utf-16"), (codecs.BOM_UTF8, "utf-8-sig"))


def marked_encoding(data: bytes) -> str:
    """The codec that reads ``data``: the one its byte-order mark names (dropping the mark:
    ``utf-8-sig``, ``utf-16``, ``utf-32``), else ``utf-8``."""
    return next((encoding for mark, encoding in _MARKS if data.startswith(mark)), "utf-8")


def read_text(path: str | Path) -> str:
    """The text of the file at ``path`` (``~`` expanded; :func:`marked_encoding`). ``OSError`` when it cannot be
    read, ``UnicodeDecodeError`` when its bytes are not text in that encoding: the caller names
    the option the file was given with."""
    data = read_file_bytes(path)
    return data.decode(marked_encoding(data))


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of the regular file at ``path`` (``~`` expanded). ``OSError`` when it cannot be
    read, and for a device, pipe or socket (``/dev/zero`` behind a ``prompts.jsonl`` link would be
    read until the memory runs out; a pipe waits for a writer that may never come)."""
    import errno
    import stat

    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None  # (read_bytes names why)
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OSError(errno.EINVAL, "not a regular file (a device, pipe or socket, which may never end)", str(path))
    return path.read_bytes()
