"""What ``crosspatch merge-check`` found, as :func:`~crosspatch.workflows.mergecheck.merge_check`
returns it and :func:`~crosspatch.workflows.opening.open_run` reads it back from a finished
directory: ``merge-check.json``'s document, a dict, that a notebook shows as its page's sections."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MergeCheckResult", "merge_check_sections"]


class MergeCheckResult(dict):
    """``merge-check.json``'s document (a dict: ``result["verdict"]``, ``result["diagnostic"]``, ...)
    and ``out``, the directory it was written to (None without one). ``kind`` is ``"splice"`` (a
    passthrough layer splice, evaluated as ``crosspatch splice`` at its boundary) or
    ``"weights"`` (a weight merge, preflighted and diagnosed beside its parents)."""

    def __init__(self, document: dict, out: str | Path | None = None):
        super().__init__(document)
        self.out = Path(out) if out is not None else None

    @property
    def document(self) -> dict:
        return dict(self)

    @property
    def kind(self) -> str:
        return self["kind"]

    def _repr_html_(self) -> str:
        """What a notebook shows: the sections of ``merge-check.html``, every text escaped."""
        from ..report.notebook import sections_card

        head = f"crosspatch merge-check: a {self['method']} configuration"
        return sections_card(head, merge_check_sections(self.document), self.out, "merge-check.html")

    def __repr__(self) -> str:
        if self["kind"] == "splice":
            found = f"{self['this_chimera']} at layer {self['plan']['boundary']}, verdict {self.get('verdict')}"
        else:
            merge = (self.get("diagnostic") or {}).get("merge") or {}
            found = (f"preflight {'pass' if self['preflight']['passed'] else 'fail'}, the merge's verdict "
                     f"{merge.get('verdict')}")
        return f"MergeCheckResult({self['method']}: {found})"


def merge_check_sections(document: dict) -> list:
    """The sections of a merge-check's pages (and of its notebook card), from its document."""
    from ..core.registry import Section, Table
    from .splice import _ci

    if document["kind"] == "splice":
        d = document.get("diagnostic") or {}
        rate = document["validator_pass_rate"]
        return [Section("Layer splice", [
            f"{document['method']} configuration: {document['this_chimera']} at layer {document['plan']['boundary']} "
            f"of {document['plan']['num_layers']}; {document['receives']}.",
            f"Its continuations: validator pass rate {'n/a' if rate is None else f'{rate:.0%}'}, identical to the tuned "
            f"model's on {document['same_as_tuned']:.0%} of prompts (all four chimeras: splice/splice.html).",
            f"Cross-patching there: E_PT {_ci(d.get('E_PT'))}, E_IT {_ci(d.get('E_IT'))}, interaction "
            f"{_ci(d.get('interaction'))}; verdict {document.get('verdict')}."])]
    rows = [[role if not v.get("model") else f"{role} ({v['model']})", str(v.get("boundary")), _ci(v.get("E_PT")), _ci(v.get("E_IT")), _ci(v.get("interaction")),
             str(v.get("verdict"))] for role, v in document["diagnostic"].items()]
    checks = document["preflight"]["checks"]
    return [Section("Preflight of the merge", [f"against base {document['base']}"],
                    [Table(["check", "status", "finding"], [[c["name"], c["status"], c["summary"]] for c in checks])]),
            Section("The merge and its parents against the base", [],
                    [Table(["model", "boundary", "E_PT", "E_IT", "interaction", "verdict"], rows)])]
