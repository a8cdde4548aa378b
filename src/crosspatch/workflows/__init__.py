"""Practitioner workflows around the diagnostic: ``preflight`` (is the adapter active, does the
merge agree with it, do the models still generate sensibly) and ``splice`` (what a layer-range
merge would write). Each validates its inputs before any model loads and writes one JSON
document with Markdown and HTML renderings into its own output directory. ``gate`` turns a run's verdict into an exit code for CI, and
``callback`` runs the diagnostic from a transformers ``Trainer``."""

__all__ = ["callback", "checkpoints", "gate", "mergecheck", "output", "preflight", "preflight_checks", "preflight_measures",
           "preflight_policy", "splice"]  # the modules
