"""The checks before any weight loads (:mod:`crosspatch.models.preload`): ``crosspatch run`` and the
Python API's ``load_models`` run the same list, so a defect in a checkpoint is the same named error,
with the same words, from either, and nothing has loaded when it is raised."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.testing import save_tiny_pair, tiny_model


def _deeper(root):
    tiny_model("llama", 6, seed=1).save_pretrained(root / "deeper")
    return root / "deeper"


def _pickled(root):
    import torch
    from safetensors.torch import load_file

    target = root / "pickled"
    shutil.copytree(root / "tuned", target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def _other_width(root):
    target = root / "wider"
    shutil.copytree(root / "tuned", target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | {"intermediate_size": config["intermediate_size"] * 2}))
    return target


def _missing(root):
    return root / "no-such-checkpoint"


@pytest.mark.parametrize("make, named", [(_deeper, "LayerCountMismatchError"), (_pickled, "PickleWeightsRefusedError"),
                                         (_other_width, "ModelLoadError"), (_missing, "ModelLoadError")])
def test_the_command_line_and_load_models_name_a_defect_alike_before_loading(tmp_path, monkeypatch, make, named):
    from crosspatch import errors
    from crosspatch.execution import opening

    root = save_tiny_pair(tmp_path / "pair")
    descendant = make(root)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Rain in Boston"}) + "\n")
    monkeypatch.setattr(opening, "load_tokenizer", lambda *a, **k: pytest.fail("loading began"))
    res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(descendant), "--prompts",
                                   str(prompts), "--out", str(tmp_path / "r"), "--dry-run"])
    with pytest.raises(getattr(errors, named)) as raised:
        opening.load_models(str(root / "base"), tuned=str(descendant), device="cpu")
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert f"{type(raised.value).__name__}: " in said and " ".join(str(raised.value).split()) in said, (said, raised.value)
    assert not (tmp_path / "r").exists()
