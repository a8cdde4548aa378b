"""A trainer's ``checkpoint-<step>`` directories as lineage stages (``crosspatch lineage
--checkpoints OUTPUT_DIR``): found, checked and ordered by step before any model loads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointDiscoveryError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class TrainerCheckpoint:
    step: int
    path: Path
    adapter: bool  # a PEFT adapter (adapter_config.json) rather than a full checkpoint

    @property
    def name(self) -> str:
        return f"step-{self.step}"


def discover_checkpoints(output_dir: str | Path) -> list[TrainerCheckpoint]:
    """Every ``checkpoint-<step>`` directory of a transformers/TRL trainer's ``output_dir`` in
    step order, each a full checkpoint (config.json and safetensors weights) or a PEFT adapter
    (adapter_config.json and adapter weights); anything else among them is a
    :class:`CheckpointDiscoveryError` naming it (a checkpoint still being written, say), and so is
    a directory without any."""
    if not isinstance(output_dir, (str, Path)) or not str(output_dir).strip():
        raise CheckpointDiscoveryError(f"--checkpoints must be a trainer's output directory, not {output_dir!r}")
    root = Path(output_dir).expanduser()
    if not root.is_dir():
        raise CheckpointDiscoveryError(f"--checkpoints {root}: no such directory")
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT.match(child.name)
        if not match or not child.is_dir():
            continue
        if (child / "adapter_config.json").exists():
            if not any(f.name.startswith("adapter_model") for f in child.iterdir()):
                raise CheckpointDiscoveryError(f"{child} has adapter_config.json but no adapter weights; is it still "
                                               "being written?")
            found.append(TrainerCheckpoint(int(match.group(1)), child, True))
        elif (child / "config.json").exists():
            if not any(f.name.startswith("model") and f.suffix in (".safetensors", ".bin") or f.name.endswith(
                    ".safetensors.index.json") for f in child.iterdir()):
                from ..models.paths import sharded_training_state

                sharded = sharded_training_state(child)
                raise CheckpointDiscoveryError(f"{child} has config.json but no model weights; "
                                               + (sharded or "is it still being written?"))
            found.append(TrainerCheckpoint(int(match.group(1)), child, False))
        else:
            raise CheckpointDiscoveryError(f"{child} is neither a model checkpoint (config.json) nor a PEFT adapter "
                                           "(adapter_config.json)")
    if not found:
        runs = sorted(child.name for child in root.iterdir() if child.is_dir() and any(
            _CHECKPOINT.match(grandchild.name) for grandchild in child.iterdir()))
        within = (f"; its folders {', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''} hold some (the trials of a "
                  "hyperparameter search, or trainings apart): give one of them") if runs else ""
        raise CheckpointDiscoveryError(f"--checkpoints {root} holds no checkpoint-<step> directories (a trainer's "
                                       f"output_dir with save_strategy set writes them){within}")
    steps: dict[int, Path] = {}
    for checkpoint in sorted(found, key=lambda c: c.path.name):
        if checkpoint.step in steps:  # checkpoint-100 and checkpoint-0100: one stage name, two models
            raise CheckpointDiscoveryError(f"{steps[checkpoint.step]} and {checkpoint.path} are both step "
                                           f"{checkpoint.step}: move one away")
        steps[checkpoint.step] = checkpoint.path
    return sorted(found, key=lambda c: c.step)
