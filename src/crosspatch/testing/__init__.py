"""Tiny models and tokenizers built from configs (random init, no downloads) for tests and
notebooks. Public so that users can test their own extensions the way crosspatch tests itself."""

from .analyses import BlendProbe
from .tiny import (
    ARCHITECTURES,
    MOE_ARCHITECTURES,
    char_tokenizer,
    make_pair,
    perturb_layers,
    save_tiny_pair,
    tiny_model,
    tiny_pair,
)

__all__ = ["ARCHITECTURES", "BlendProbe", "MOE_ARCHITECTURES", "char_tokenizer", "make_pair", "perturb_layers", "save_tiny_pair", "tiny_model", "tiny_pair"]
