"""The built-in analyses, one module each (controls of DESIGN 1.5 and the rest): each module
defines its analysis (when it needs passes), its options, its ``summarize`` and ``render``, and
registers them with :func:`crosspatch.core.registry.register_analysis`. The registry finds every
module here (and each subpackage's ``plugin`` module) by itself: a new analysis is one new file."""

__all__ = []  # its modules are found by the registry (core.registry.builtin_modules), not listed
