"""Kept for one release: :mod:`crosspatch.finished` is the one after-the-fact path."""

from .finished import first_events, reopen_models

__all__ = ["first_events", "reopen_models"]
