"""The files crosspatch writes match their schemas (crosspatch.store.schemas), are checked on write and
on read, and docs/schemas.md is rendered from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosspatch.errors import CorruptRunFileError, RunWriteError
from crosspatch.store import RunStore, checked
from crosspatch.store.schemas import check_document, render_schema_docs


def test_the_reference_page_is_rendered_from_the_schemas():
    docs = (Path(__file__).parents[1] / "docs" / "schemas.md").read_text()
    assert docs.strip() == render_schema_docs().strip(), \
        'run: python -c "from crosspatch.store.schemas import render_schema_docs as r; print(r())" > docs/schemas.md'


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
