"""Named errors. Each says what differs or what is wrong, so a user can act on it."""

from __future__ import annotations


class CrosspatchError(Exception):
    """Base class of every error crosspatch raises on purpose."""


# --- pair compatibility -------------------------------------------------------------------
class PairMismatchError(CrosspatchError):
    """The base and the descendant cannot be cross-patched."""


class ArchitectureMismatchError(PairMismatchError):
    """The two models are different architecture classes."""


class LayerCountMismatchError(PairMismatchError):
    """The two models have a different number of decoder layers."""


class HiddenSizeMismatchError(PairMismatchError):
    """The two models have a different residual width."""


class VocabularyMismatchError(PairMismatchError):
    """A token string maps to different ids in the two tokenizers, so logits are not comparable."""


class SpecialTokensMismatchError(PairMismatchError):
    """BOS/EOS/PAD/UNK differ between the tokenizers (pass allow_special_token_mismatch to accept)."""


class PromptTokenizationMismatchError(PairMismatchError):
    """A prompt tokenizes to different ids under the two tokenizers."""


class UnsupportedArchitectureError(CrosspatchError):
    """crosspatch could not find the decoder layers, final norm or lm_head of a model."""


# --- loading --------------------------------------------------------------------------------
class ModelLoadError(CrosspatchError):
    """A checkpoint could not be loaded as asked."""


class PickleWeightsRefusedError(ModelLoadError):
    """Only pickle (.bin/.pt) weights were found and allow_pickle was not given."""


# --- inputs ---------------------------------------------------------------------------------
class PromptFileError(CrosspatchError):
    """A prompt file is malformed; the message names the file, line and field."""


class BoundaryError(CrosspatchError):
    """The boundary layer is outside the model's layers."""


# --- runs -----------------------------------------------------------------------------------
class RunDirectoryError(CrosspatchError):
    """A run directory is missing files or belongs to a different configuration."""


class PolicyFileError(CrosspatchError):
    """A verdict policy file cannot be read or is not a mapping of known thresholds."""
