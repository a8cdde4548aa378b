"""The files crosspatch writes match their schemas (crosspatch.store.schemas), are checked on write and
on read, and docs/schemas.md is rendered from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosspatch.errors import CorruptRunFileError, RunWriteError
from crosspatch.store import RunStore, checked
from crosspatch.store.schema_docs import render_schema_docs
from crosspatch.store.schemas import check_document


def test_the_reference_page_is_rendered_from_the_schemas():
    docs = (Path(__file__).parents[1] / "docs" / "schemas.md").read_text()
    assert docs.strip() == render_schema_docs().strip(), \
        'run: python -c "from crosspatch.store.schema_docs import render_schema_docs as r; print(r())" > docs/schemas.md'


def test_a_document_of_the_wrong_shape_is_refused_on_write_and_on_read(tmp_path):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    from .test_store import many_prompts

    run(make_pair("llama"), many_prompts(4), boundary=2, max_new_tokens=4, bootstrap=0, progress=False,
        controls="none", out=tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert check_document("summary.json", summary) == []
    with pytest.raises(RunWriteError, match="counts"):
        checked("summary.json", {**summary, "counts": {**summary["counts"], "events": "many"}})
    (tmp_path / "r" / "summary.json").write_text(json.dumps({**summary, "controls": "none"}))
    with pytest.raises(CorruptRunFileError, match="does not match its schema"):
        RunStore(tmp_path / "r").summary()
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**config, "resolved_boundaries": "two"}))
    with pytest.raises(CorruptRunFileError, match="does not match its schema"):
        RunStore(tmp_path / "r").config()
    # damaged inside, where the reports and the gate read: a named error, never a Python one
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    from typer.testing import CliRunner

    from crosspatch.cli import app

    b = summary["boundaries"][0]

    def damaged(edit) -> dict:
        document = json.loads(json.dumps(summary))
        edit(document)
        return document

    damages = {
        "a boundary without results": lambda s: s["boundaries"].append("x"),
        "counts without prompts": lambda s: s.update(counts={}),
        "a boundary without the common-IT readout": lambda s: s["results"].update({b: {}}),
        "groups that are not an object": lambda s: s["results"][b]["common_it"].update(by_category="x"),
        "groups without effects": lambda s: s["results"][b]["common_it"].update(by_difficulty={"hard": "x"}),
        "kinds averaged that are text": lambda s: s["results"][b]["common_it"].update(kinds_averaged="x"),
        "no readout agreement": lambda s: s["results"][b].update(readout_agreement=None),
        "an agreement of a list": lambda s: s["results"][b]["readout_agreement"].update(same_sign_fraction=[]),
        "a vocabulary of text": lambda s: s.update(real_vocabulary="x"),
        "masked counts of nothing": lambda s: s.update(real_vocabulary={"masked_counts": None}),
        "patterns of a number": lambda s: s.update(real_vocabulary={"placeholder_patterns_matched": -1}),
        "a control row without its name": lambda s: s.update(controls=[{"status": "warn"}]),
        "a control that weakens nothing": lambda s: s.update(controls=[{"control": "c", "status": "warn",
                                                                         "details": {"weakens": None}}]),
        "a no-divergence prompt without its reason": lambda s: s.update(no_divergence_prompts=[{"prompt_id": "p"}]),
        "a verdict without its reason": lambda s: s["verdict"].pop("reason"),
        "a verdict without its word": lambda s: s["verdict"].pop("verdict"),
        "a verdict without its boundary": lambda s: s["verdict"].pop("boundary"),
        "every event without its count": lambda s: s["results"][b]["common_it"]["all"].pop("n_events"),
        "a group without its event count": lambda s: next(iter(s["results"][b]["common_it"]["by_position"].values()))
        .pop("n_events"),
        "kinds averaged without their prompt count": lambda s: s["results"][b]["common_it"]["kinds_averaged"]
        .pop("n_prompts"),
    }
    for what, edit in damages.items():
        (tmp_path / "r" / "summary.json").write_text(json.dumps(damaged(edit)))
        for command, named in ((["report", str(tmp_path / "r")], "CorruptRunFileError"),
                               (["gate", str(tmp_path / "r")], "unusable")):  # (the gate's own word for it)
            res = CliRunner().invoke(app, command)
            assert res.exit_code == 2 and named in res.output and "summary.json" in res.output, (what, res.output)
    # the effects a summary of an earlier crosspatch lacks, and a control's reading: shown as n/a or blank
    def earlier(document):
        if isinstance(document, dict):
            for name in ("native_shift", "direct_share", "matched_portable_ratio", "interaction_share",
                         "late_interaction_share", "odds_interaction"):
                (document.get("effects") or {}).pop(name, None)
            for value in document.values():
                earlier(value)
        elif isinstance(document, list):
            for value in document:
                earlier(value)

    (tmp_path / "r" / "summary.json").write_text(json.dumps(damaged(
        lambda s: (earlier(s["results"]), s.update(controls=[{"control": "c", "status": "warn"}]),
                   s["results"][b]["common_it"].pop("by_position")))))  # (groups a native readout lacks)
    for command in (["report", str(tmp_path / "r")], ["gate", str(tmp_path / "r")]):
        res = CliRunner().invoke(app, command)
        assert res.exit_code in (0, 1) and (res.exception is None or isinstance(res.exception, SystemExit)), \
            (command, res.exception)
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    for what, models in (("a base of nothing", {**config["models"], "base": None}),
                         ("a descendant path of a number", {**config["models"], "base": {"path": 3}})):
        (tmp_path / "r" / "config.json").write_text(json.dumps({**config, "models": models}))
        res = CliRunner().invoke(app, ["report", str(tmp_path / "r")])
        assert res.exit_code == 2 and "CorruptRunFileError" in res.output, (what, res.output)
