"""crosspatch: first-divergence cross-patching of a base model and its fine-tuned descendant.

    pair = crosspatch.load_pair("base-dir", tuned="tuned-dir")          # or adapter="lora-dir"
    result = crosspatch.run(pair, crosspatch.load_prompts("prompts.jsonl"), boundary=0.6)
    result.summary["results"]; result.events  # pandas DataFrame, one row per event
"""

from .cells import CELLS, READOUTS, CellRecord
from .divergence import DivergenceEvent, NoDivergence
from .errors import CrosspatchError
from .analysis import Analysis, EventSet
from .execution import ModelPair, ModelSet, load_models, load_pair, models_from_modules, pair_from_models
from .models import LoadOptions
from .pipeline import RunConfig, RunResult, rerender, run
from .compare import compare, lineage
from .prompts import Prompt, load_prompts

__version__ = "0.1.0"

__all__ = [
    "CELLS", "READOUTS", "Analysis", "CellRecord", "CrosspatchError", "DivergenceEvent", "EventSet",
    "LoadOptions", "ModelPair", "ModelSet", "NoDivergence", "Prompt", "RunConfig", "RunResult", "load_models",
    "load_pair", "load_prompts", "compare", "lineage", "models_from_modules", "pair_from_models", "rerender", "run",
]
