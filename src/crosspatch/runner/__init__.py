"""Driving a run: its options (``config``), the one path that runs it (``pipeline``), what it
produced (``result``), resuming (``resume``), shards (``shards``), the summary (``summary``),
analyses on a finished run (``finished``; the ``consequence`` and ``features`` commands in ``on_finished``), several descendants or training stages (``compare``),
the option checks made before any model loads (``checks``) and progress lines (``progress``)."""

__all__ = ["checks", "compare", "config", "finished", "on_finished", "pipeline", "progress", "result", "resume", "shards",
           "summary"]
