"""The method itself, independent of how a run is driven: the events and their search
(``divergence``), the 2x2 (``cells``), the analysis contract and its registry (``analysis``,
``registry``), the records as plain data and the one effect formula (``records``), token classes
and event kinds (``tokens``), the prompt-cluster statistics (``stats``) and the verdict's
decision rule (``verdict``)."""

__all__ = ["analysis", "cells", "divergence", "records", "registry", "stats", "tokens", "verdict"]
