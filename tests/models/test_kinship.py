"""How a descendant's weights stand to its base's, read from their files before any model loads."""

from __future__ import annotations

import pytest
import torch

from crosspatch.execution import load_pair
from crosspatch.models.kinship import same_tensors
from crosspatch.testing import char_tokenizer, tiny_model


def _saved(path, model, shard_size: str | None = None):
    model.save_pretrained(path, **({"max_shard_size": shard_size} if shard_size else {}))
    char_tokenizer().save_pretrained(path)
    return str(path)


def test_the_base_saved_again_in_other_files_is_named_and_its_run_is_unusable_at_the_gate(tmp_path):
    """The base saved again with another shard size (a training run that changed nothing, saved
    with save_pretrained's defaults) has other weight files, so their sha256 differed from the
    base's: the run found no divergence and gate passed "no-late-effect" as if a fine-tune had been
    measured. Its tensors are compared one by one: it is named, recorded, and gate calls it unusable."""
    from crosspatch.runner.pipeline import run
    from crosspatch.workflows.gate import gate_run

    model = tiny_model("llama")
    base, again = _saved(tmp_path / "base", model), _saved(tmp_path / "again", model, shard_size="100KB")
    assert len(list((tmp_path / "again").glob("*.safetensors"))) > 1
    pair = load_pair(base, tuned=again)
    said = "the descendant: its weights are the base's, tensor for tensor and byte for byte (saved in other files)"
    assert [w for w in pair.warnings if said in w] and pair.provenance["tuned"]["computes_the_base"].startswith(said)
    run(pair, ["The sky is", "Rain will"], max_new_tokens=4, bootstrap=0, progress=False, out=tmp_path / "run")
    outcome = gate_run(tmp_path / "run")
    assert outcome["status"] == "unusable" and "the run measured no fine-tune" in outcome["reason"]
    # unhashed weights (--no-hash-weights): nothing is read whole, nothing compared
    assert not [w for w in load_pair(base, tuned=again, hash_weights=False).warnings if "tensor for tensor" in w]


def test_a_fine_tune_of_one_tensor_in_other_files_is_not_the_base(tmp_path):
    """One changed value in the last layer, the rest equal, saved in other files: not the base; nor
    is the same model in another dtype. The same model saved in other files is."""
    model = tiny_model("llama")
    base = _saved(tmp_path / "base", model)
    tuned = tiny_model("llama")
    with torch.no_grad():
        tuned.model.layers[-1].mlp.down_proj.weight[0, 0] += 1e-3
    changed = _saved(tmp_path / "tuned", tuned, shard_size="100KB")
    assert not same_tensors(base, changed) and not same_tensors(base, changed, block=7)  # (read in slices of 7 rows or so)
    assert not same_tensors(base, _saved(tmp_path / "half", tiny_model("llama").to(torch.bfloat16)))
    same = _saved(tmp_path / "same", tiny_model("llama"), shard_size="100KB")
    assert same_tensors(base, same) and same_tensors(base, same, block=7)
    assert not same_tensors(base, str(tmp_path / "nowhere")) and not same_tensors(base, "no-such/model-anywhere")


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_a_damaged_weight_file_is_no_sameness_and_no_error_here(tmp_path, damage):
    """A damaged file is the loader's named error (checked before this): here it is simply not the base."""
    model = tiny_model("llama")
    base, other = _saved(tmp_path / "base", model), _saved(tmp_path / "other", model, shard_size="100KB")
    victim = sorted((tmp_path / "other").glob("*.safetensors"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"garbage" * 10)
    assert not same_tensors(base, other)
