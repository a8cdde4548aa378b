"""The execution layer: named models and their residency, the pass vocabulary, the executor
that runs passes, and the engines that distribute chunks of prompts (see docs/architecture.md).

Analyses import from here; this package imports only ``models`` and ``errors``."""

from .batching import kv_bytes_per_token, largest_batch_tokens, length_batches
from .engines import ENGINES, map_chunks
from .executor import Executor, Program, pad_stack
from .in_memory import models_from_modules, pair_from_models, pair_from_peft_model
from .modelset import RESIDENCIES, ModelPair, ModelSet, ResidentSet, SequentialSet
from .opening import choose_residency, load_models, load_pair
from .passes import Capture, Decode, Edit, History, HistoryWish, Late, Search, SearchHistory, SearchOutcome, combined_wish
from .roles import BASE
from .search import greedy_rollout

__all__ = [
    "BASE", "ENGINES", "RESIDENCIES", "Capture", "Decode", "Edit", "Executor", "History", "HistoryWish", "Late", "ModelPair", "ModelSet",
    "Program", "ResidentSet", "Search", "SearchHistory", "SearchOutcome", "SequentialSet", "choose_residency", "greedy_rollout",
    "combined_wish", "kv_bytes_per_token", "largest_batch_tokens", "length_batches", "load_models", "load_pair", "map_chunks",
    "models_from_modules", "pad_stack", "pair_from_models", "pair_from_peft_model",
]
