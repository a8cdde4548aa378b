"""Named errors. Each says what differs or what is wrong, so a user can act on it."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (cut to ``limit``), or its type name when it says
    nothing: what a named error quotes of the library error under it."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


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
    """BOS/EOS/UNK differ between the tokenizers (pass allow_special_token_mismatch to accept; a PAD
    difference alone is only recorded)."""


class PromptTokenizationMismatchError(PairMismatchError):
    """A prompt tokenizes to different ids under the two tokenizers."""


class UnsupportedArchitectureError(CrosspatchError):
    """crosspatch could not find the decoder layers, final norm or lm_head of a model."""


# --- loading --------------------------------------------------------------------------------
class ModelLoadError(CrosspatchError):
    """A checkpoint could not be loaded as asked."""


class CheckpointDiscoveryError(ModelLoadError):
    """A trainer output directory holds no usable ``checkpoint-<step>`` directories, or one of them
    is neither a model checkpoint nor a PEFT adapter (e.g. still being written)."""


class PickleWeightsRefusedError(ModelLoadError):
    """Only pickle (.bin/.pt) weights were found and allow_pickle was not given."""


class ModelPathNotFoundError(ModelLoadError):
    """A model path that looks local does not exist (nothing is asked of a hub for it)."""


class AdapterGivenAsCheckpointError(ModelLoadError):
    """A PEFT adapter directory was given where a full checkpoint is expected (use --adapter)."""


class AdapterShapeMismatchError(ModelLoadError):
    """An adapter's weights do not fit the base model (another base, or another size)."""


class UnsupportedAdapterError(ModelLoadError):
    """A PEFT adapter of a prompt-learning kind (prompt / prefix / P-tuning): it changes the input
    sequence, not the layers, so there is no descendant late stack to cross-patch."""


class HubUnavailableError(ModelLoadError):
    """A hub id cannot be resolved: offline (HF_HUB_OFFLINE=1 or no network) and not cached."""


class ChatTemplateMissingError(ModelLoadError):
    """--chat-template was asked for but the descendant's tokenizer has no chat template."""


# --- inputs ---------------------------------------------------------------------------------
class PromptFileError(CrosspatchError):
    """A prompt file is malformed; the message names the file, line and field."""


class PromptSetMismatchError(PromptFileError):
    """A prompt file given to a finished run (``crosspatch consequence``) is not that run's: ids the
    run does not have, or run events whose prompt the file lacks."""


class PromptImageError(PromptFileError):
    """An image prompt that cannot be run: a text-only model, an unreadable image, processors of
    the pair that disagree, or image placeholder tokens without an image."""


class BoundaryError(CrosspatchError, ValueError):
    """The boundary layer is outside the model's layers, or a fraction is not in (0, 1)."""


class BoundaryNotScoredError(BoundaryError, KeyError):
    """A result was asked for a boundary its run did not score; also a ``KeyError``, as a lookup
    of a missing key is (its message prints unquoted)."""

    __str__ = BaseException.__str__


class OptionError(CrosspatchError, ValueError):
    """An option has a value crosspatch cannot use (named, with the accepted values)."""


class DeviceUnavailableError(OptionError):
    """The requested device is not available to this torch build (e.g. CUDA on a CPU-only torch)."""


class GroupByFieldError(OptionError):
    """--group-by names a field that no prompt has."""


class DeviceMemoryError(CrosspatchError):
    """A single sequence does not fit in memory even alone in its batch (larger batches that run
    out of memory are split and retried automatically)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory: torch's device OOM (CUDA, MPS, XPU:
    ``OutOfMemoryError``), Python's ``MemoryError``, or torch's CPU allocator failing (a
    ``RuntimeError`` naming ``DefaultCPUAllocator``: a container's memory limit, no overcommit)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in str(exc))


class EngineWorkerError(CrosspatchError):
    """A worker of the Ray engine died (killed, out of host memory, its node lost) while it
    processed a chunk; the chunks finished before are stored, so rerunning resumes."""


class AnalysisPluginError(CrosspatchError):
    """A registered analysis (a plug-in, or a built-in) failed in its own code (its ``build``,
    program, ``summarize`` or ``render``: the analysis, the step, the exception and the line are named) or
    returned what crosspatch cannot store or render. The records written before are kept: once the
    analysis is fixed or left out, the same command finishes the run from them."""


class PromptTooLongError(CrosspatchError):
    """Prompts plus the generation budget exceed the model's position limit (ids listed)."""


# --- runs -----------------------------------------------------------------------------------
class RunDirectoryError(CrosspatchError):
    """A run directory is missing files or belongs to a different configuration."""


class NotARunDirectoryError(RunDirectoryError):
    """The directory is not a crosspatch run directory (no marker, no config.json)."""


class RunDirectoryNotEmptyError(RunDirectoryError):
    """--out holds files that crosspatch did not write, or another run (refused, never mixed)."""


class RunSettingsMismatchError(RunDirectoryError):
    """The run directory holds a run with other settings (the differing settings are named)."""


class ForeignRecordsError(RunDirectoryError):
    """Records in a run directory belong to another run (their run fingerprint differs)."""


class CorruptRunFileError(RunDirectoryError):
    """A run file (config.json, summary.json, a .jsonl file) is not valid; file and line named.
    ``torn_tail``: the damage is a records file's last line cut off by an interrupted write, which
    resuming the run cuts away."""

    torn_tail: bool = False

    @classmethod
    def unrenderable(cls, document, exc: BaseException) -> "CorruptRunFileError":
        """A stored document (compare.json, a workflow's) whose pages cannot be rendered from it:
        ``exc``, what rendering raised at a part it lacks or holds damaged."""
        return cls(f"{document}: its pages cannot be rendered from it ({type(exc).__name__}: {exc}): not the "
                   "document crosspatch wrote; run the command again into a new directory")


class RunSchemaError(RunDirectoryError):
    """A run file was written in another version of crosspatch's file format (its
    ``schema_version``), which this version does not read."""


class IncompleteRunError(RunDirectoryError):
    """Prompts are missing from a run's records (events + no-divergence + invalid != prompts)."""


class RunWriteError(RunDirectoryError):
    """Writing to the run directory failed (disk full, permission denied); it stays resumable."""


class UnsupportedMergeConfigError(CrosspatchError):
    """A mergekit configuration ``merge-check`` cannot evaluate (it names why), or mergekit is not
    installed."""


class PolicyFileError(CrosspatchError):
    """A verdict policy file cannot be read or is not a mapping of known thresholds."""
