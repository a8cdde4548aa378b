"""Helpers the built-in controls share: seeded per-prompt generators and interaction blocks."""

from __future__ import annotations

import zlib

import numpy as np

from ..core.cells import CellRecord
from ..core.stats import BootstrapConfig, cell_matrix, effect_block


def stable_rng(seed: int, prompt_id: str) -> np.random.Generator:
    """A generator seeded by the run's seed and the prompt id: the same draw in every process."""
    return np.random.default_rng([seed, zlib.crc32(prompt_id.encode())])


def cell_rows(records: list[CellRecord]) -> list[dict]:
    return [r.to_record() for r in records]


def mean_interaction(records: list[CellRecord]) -> float | None:
    """The mean common-IT interaction of the valid records (None without any)."""
    vals = [r.effects()["interaction"] for r in records if r.valid]
    return float(np.mean(vals)) if vals else None


def interaction_block(records: list[CellRecord], boot: BootstrapConfig) -> dict:
    """The common-IT interaction of the valid records with its prompt-cluster interval and n."""
    recs = [r for r in records if r.valid]
    return effect_block(cell_matrix(recs, "common_it"), [r.prompt_id for r in recs], boot)["effects"]["interaction"] | {"n": len(recs)}


def cell_records(rows: list[dict]) -> list[CellRecord]:
    return [CellRecord.from_record(r) for r in rows]
