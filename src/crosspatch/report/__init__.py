"""Reports rendered from a stored run directory alone."""

from .markdown import md_escape, render_markdown

__all__ = ["md_escape", "render_markdown"]
