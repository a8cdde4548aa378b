"""Practitioner workflows around the diagnostic: ``preflight`` (is the adapter active, does the
merge agree with it, do the models still generate sensibly) and ``splice`` (what a layer-range
merge would write). Each validates its inputs before any model loads and writes one JSON
document with Markdown and HTML renderings into its own output directory."""

__all__ = ["checkpoints", "mergecheck", "output", "preflight", "section", "splice"]  # the modules
