"""Crosscoder, mediation, rescue and closure."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from crosspatch.analyses.features import Crosscoder, load_crosscoder, quality_gate, save_crosscoder, train_crosscoder
from crosspatch.analyses.features.crosscoder import CrosscoderConfig
from crosspatch.analyses.features.study import Closure, split_events
from crosspatch.core.analysis import EventSet
from crosspatch.execution import Edit, Executor, Late
from crosspatch.testing import make_pair


def _data(n=600, d=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(40, d, generator=gen)
    codes = (torch.rand(n, 40, generator=gen) < 0.08).float() * torch.rand(n, 40, generator=gen) * 3
    x_pt = codes @ atoms + 0.01 * torch.randn(n, d, generator=gen)
    x_it = codes @ (atoms + 0.3 * torch.randn(40, d, generator=gen)) + 0.01 * torch.randn(n, d, generator=gen)
    return x_pt, x_it


def test_shapes_and_batch_topk_activates_k_latents_per_row_on_average():
    cc = Crosscoder(CrosscoderConfig(d_in=24, n_latents=64, k=5, layers=[2, 3], hidden_size=12))
    a, b = torch.randn(32, 24), torch.randn(32, 24)
    z = cc.encode(a, b, batch_topk=True)
    assert z.shape == (32, 64) and cc.decode(z, "it").shape == (32, 24)
    assert int((z > 0).sum()) == 5 * 32  # exactly k x batch active (pre-activations are positive here)


def test_save_load_round_trip_keeps_normalisation(tmp_path):
    x_pt, x_it = _data()
    cc = train_crosscoder(x_pt, x_it, [2, 3], 12, n_latents=64, k=6, steps=50)
    save_crosscoder(cc, tmp_path / "cc")
    back = load_crosscoder(tmp_path / "cc")
    assert back.config == cc.config and back.config.norm_scale["pt"] > 0 and len(back.config.norm_mean["it"]) == 24
    with torch.no_grad():
        a = cc.normalize(x_pt[:5], "pt")
        assert torch.equal(cc.encode(a, cc.normalize(x_it[:5], "it")), back.encode(a, back.normalize(x_it[:5], "it")))


@pytest.mark.slow
def test_training_learns_and_the_quality_gate_reports_every_check():
    x_pt, x_it = _data()
    cc = train_crosscoder(x_pt[:500], x_it[:500], [0, 1], 12, n_latents=64, k=6, steps=600)
    gate = quality_gate(cc, x_pt[500:], x_it[500:])
    assert set(gate["variance_explained"]) == {"0", "1"}
    assert min(v for layer in gate["variance_explained"].values() for v in layer.values()) > 0.5
    assert set(gate["checks"]) == {"variance_explained>=0.75", "mean_l0_within_10%", "alive_share>=0.5"}


def test_ablating_all_latents_removes_the_whole_reconstruction():
    cc = Crosscoder(CrosscoderConfig(d_in=24, n_latents=64, k=5, layers=[0, 1], hidden_size=12))
    z = cc.encode(torch.randn(8, 24), torch.randn(8, 24), batch_topk=True)
    with torch.no_grad():
        full = cc.decoder_contribution(z, "it", range(64))
        assert torch.allclose(full, cc.decode(z, "it") - cc.b_dec[1], atol=1e-6)
        assert torch.allclose(cc.decoder_contribution(z, "it"), full, atol=1e-6)


def test_zero_edits_are_exact_no_ops():
    pair = make_pair("llama")
    ex = Executor(pair)
    seqs = [[1, 40, 41, 42], [1, 50]]
    (u,) = ex.run([Late("tuned", 2, [torch.zeros(len(s), 32) for s in seqs], seqs)])
    (e,) = ex.run([Late("tuned", 2, [torch.zeros(len(s), 32) for s in seqs], seqs,
                        [Edit(3, "mlp", lambda h, items: h + 0.0 * torch.ones_like(h))])])
    assert all(torch.equal(a, b) for a, b in zip(u, e))


def test_closure_with_the_full_delta_equals_the_diagonal_cell():
    from crosspatch.core.divergence import DivergenceEvent

    pair = make_pair("llama", scale=0.5)
    ex = Executor(pair)
    events = [DivergenceEvent(f"p{k}", None, 3, 0, [1, 40 + k, 41 + k], 5, 6) for k in range(8)]
    evset = EventSet(events, "base", "tuned")
    train, held = evset.split()
    assert train.events and held.events  # the program ranks on one part and measures on the other
    result = ex.drive(Closure(2, ranks=(1, 32)).program(ex, evset))
    full = result["by_rank"]["32"]["pca"]  # rank = hidden size: the whole shift
    assert full["gain"] == pytest.approx(result["y_uit_lit"] - result["y_upt_lit"], abs=1e-4)
    assert set(result["by_rank"]["1"]) == {"pca", "sign_flipped", "random_subspace", "gaussian"}


def test_external_dictionary_learning_layout_loads(tmp_path):
    from safetensors.torch import save_file

    d, m = 24, 32
    weights = {"encoder.weight": torch.randn(2, d, m), "encoder.bias": torch.randn(m),
               "decoder.weight": torch.randn(2, m, d), "decoder.bias": torch.randn(2, d)}
    save_file(weights, str(tmp_path / "ae.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"activation_dim": d, "dict_size": m, "k": 4,
                                                                  "layers": [2, 3], "hidden_size": 12}}))
    cc = load_crosscoder(tmp_path)
    assert cc.config.source == "dictionary_learning" and cc.config.n_latents == m
    assert torch.equal(cc.W_dec.data, weights["decoder.weight"]) and torch.equal(cc.b_enc.data, weights["encoder.bias"])


def test_split_is_by_prompt_and_stable():
    from crosspatch.core.divergence import DivergenceEvent

    evs = [DivergenceEvent(f"p{k}", None, 1, 0, [1], 2, 3) for k in range(40)]
    a1, b1 = split_events(evs)
    a2, b2 = split_events(list(reversed(evs)))
    assert {e.prompt_id for e in a1} == {e.prompt_id for e in a2} and a1 and b1


@pytest.mark.slow
def test_features_end_to_end_on_a_run(tmp_path):
    from typer.testing import CliRunner

    from crosspatch.analyses.features import features_frames
    from crosspatch.cli import app
    from crosspatch.execution import load_pair
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import save_tiny_pair

    from ..test_store import many_prompts

    root = save_tiny_pair(tmp_path / "m", scale=0.5)
    pair = load_pair(str(root / "base"), tuned=str(root / "tuned"))
    run(pair, many_prompts(16), boundary=2, max_new_tokens=8, bootstrap=0, progress=False, out=tmp_path / "r",
        controls="none", event_kinds="first_diff")
    res = CliRunner().invoke(app, ["features", "mediate", str(tmp_path / "r"), "--latents", "64", "--k", "4",
                                   "--steps", "60", "--layers", "2"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r" / "features" / "mediate.json").read_text())
    assert result["quality_gate"] is not None and result["study"]["mediation"]
    frames = features_frames(result)
    assert {"top", "matched_random", "top_active"} <= set(frames["mediation"]["set"])
    assert (tmp_path / "r" / "features" / "crosscoder" / "crosscoder.safetensors").exists()
    assert result["engine"] == "local"
    bad = CliRunner().invoke(app, ["features", "mediate", str(tmp_path / "r"), "--engine", "spark"])
    assert bad.exit_code == 2 and "error OptionError" in bad.output and "engine must be one of local, ray" in bad.output
    assert "Sparse final-MLP features" in (tmp_path / "r" / "report.md").read_text()

    # the activation cache is reused only for the same events and layers, and an unreadable shard
    # (an interrupted write) is computed again: never a crosscoder trained on stale activations
    from safetensors import safe_open

    shard = tmp_path / "r" / "features" / "activations" / "shard_00000.safetensors"

    def cached_layers():
        with safe_open(str(shard), "pt") as f:
            return json.loads(f.metadata()["layers"]), f.get_slice("pt").get_shape()[1]

    assert cached_layers() == ([2, 3], 2 * pair.hidden_size)
    train = ["features", "train", str(tmp_path / "r"), "--latents", "64", "--k", "4", "--steps", "20"]
    assert CliRunner().invoke(app, train + ["--layers", "1"]).exit_code == 0
    assert cached_layers() == ([3], pair.hidden_size)
    # features train keeps the earlier mediate result: both files, the study shown, the other named
    assert json.loads((tmp_path / "r" / "features" / "mediate.json").read_text()) == result
    assert json.loads((tmp_path / "r" / "features" / "train.json").read_text())["result"] == "train"
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["features"]["result"] == "mediate" and summary["features"]["other_results"] == ["train"]
    shard.write_bytes(b"garbage")
    assert CliRunner().invoke(app, train + ["--layers", "1"]).exit_code == 0
    assert cached_layers() == ([3], pair.hidden_size)

    # a crosscoder given by the user is checked: damaged files and another model's are named errors
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "r" / "features" / "crosscoder", damaged)
    (damaged / "crosscoder.safetensors").write_bytes(b"garbage")
    mediate = ["features", "mediate", str(tmp_path / "r"), "--crosscoder"]
    res = CliRunner().invoke(app, mediate + [str(damaged)])
    assert res.exit_code == 2 and "error ModelLoadError" in res.output and "not a readable crosscoder" in res.output
    wide = tmp_path / "wide"
    save_crosscoder(Crosscoder(CrosscoderConfig(d_in=3 * pair.hidden_size, n_latents=8, k=2, layers=[1, 2, 3],
                                                hidden_size=pair.hidden_size)), wide)
    res = CliRunner().invoke(app, mediate + [str(wide)])
    assert res.exit_code == 2 and "error OptionError" in res.output and "late stack is layers 2..3" in res.output


def test_a_run_without_events_is_a_named_error_before_any_model_loads(tmp_path):
    from crosspatch.errors import OptionError
    from crosspatch.execution import load_pair
    from crosspatch.runner.on_finished import run_features
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import save_tiny_pair

    from ..test_store import many_prompts

    root = save_tiny_pair(tmp_path / "m")
    pair = load_pair(str(root / "base"), tuned=str(root / "base"))  # identical: no prompt diverges
    run(pair, many_prompts(4), boundary=2, max_new_tokens=4, bootstrap=0, progress=False, out=tmp_path / "r",
        controls="none", event_kinds="first_diff")
    for train_only in (True, False):
        with pytest.raises(OptionError, match="0 valid event"):
            run_features(tmp_path / "r", train_only=train_only, log=lambda m: None)
    assert not (tmp_path / "r" / "features").exists()
    # the Python API refuses what the command line refuses, before it reads the run (n_layers=0 was a torch
    # error after loading the models; k=0 trained a crosscoder that activates nothing)
    for odd in ({"n_layers": 0}, {"n_latents": 0}, {"k": 0}, {"k": 9, "n_latents": 8}, {"steps": 0},
                {"train_only": "yes"}, {"log": 5}, {"crosscoder_dir": 5}):
        with pytest.raises(OptionError):
            run_features(tmp_path / "r", **{"log": lambda m: None, **odd})
    assert not (tmp_path / "r" / "features").exists()


def test_an_event_set_splits_by_prompt_stably_and_keeps_its_states():
    """The feature study's split: a partition of the events by prompt, the same for a prompt
    whatever else is in the set, in the set's order, each part keeping the search's states."""
    from crosspatch.analyses.features.study import split_events
    from crosspatch.core.divergence import DivergenceEvent

    events = [DivergenceEvent(f"p{k}", None, 3, 0, [1, 40 + k, 41 + k], 5, 6) for k in range(40)]
    natural = {e.key: {} for e in events}
    train, held = EventSet(events, "base", "tuned", natural).split()
    assert sorted(e.prompt_id for e in train.events + held.events) == sorted(e.prompt_id for e in events)
    assert train.events and held.events and train.natural is natural and held.base == "base"
    again, _ = EventSet(events[::-1][:20], "base", "tuned").split()
    assert {e.prompt_id for e in again.events} == {e.prompt_id for e in train.events} & {e.prompt_id for e in events[::-1][:20]}
    assert [e.prompt_id for e in train.events] == [e.prompt_id for e in split_events(events)[0]]



@pytest.mark.parametrize("arch", ["granitemoe", "llama"])
def test_an_mlp_edit_reaches_the_mlp_whatever_the_family_calls_it(arch):
    """The features' edits and recordings act on each layer's MLP output: Granite-MoE calls it
    ``block_sparse_moe`` (Llama 4 ``feed_forward``, MPT ``ffn``); zeroing it at the last layer
    changes the late pass, and a layer with no MLP crosspatch knows is a named error listing its
    parts."""
    from torch import nn

    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.models.layer_hooks import layer_mlp

    pair = make_pair(arch)
    ex = Executor(pair)
    seqs = [[1, 40, 41, 42], [1, 50]]
    upstream = [torch.randn(len(s), 32, generator=torch.Generator().manual_seed(len(s))) for s in seqs]
    (plain,) = ex.run([Late("tuned", 2, upstream, seqs)])
    (edited,) = ex.run([Late("tuned", 2, upstream, seqs, [Edit(3, "mlp", lambda h, items: torch.zeros_like(h))])])
    assert all(not torch.equal(a, b) for a, b in zip(plain, edited))
    with pytest.raises(UnsupportedArchitectureError, match="no MLP crosspatch knows by name .* its parts: attention"):
        layer_mlp(nn.ModuleDict({"attention": nn.Linear(2, 2)}))


def test_the_study_is_the_same_inside_a_callers_no_grad_inference_mode_or_autocast(tmp_path):
    """A notebook calling run_features inside `torch.no_grad()` or `torch.inference_mode()` (the
    habit around model code) stopped in the crosscoder's training with torch's "element 0 of tensors
    does not require grad"; inside an autocast it trained another crosscoder (bfloat16 matmuls). The
    crosscoder trains as itself, and the whole result is the one computed outside."""
    from crosspatch.execution import load_pair
    from crosspatch.runner.on_finished import run_features
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import save_tiny_pair

    from ..test_store import many_prompts

    root = save_tiny_pair(tmp_path / "m", scale=0.5)
    run(load_pair(str(root / "base"), tuned=str(root / "tuned")), many_prompts(12), boundary=2, max_new_tokens=8,
        bootstrap=0, progress=False, out=tmp_path / "r", controls="none", event_kinds="first_diff")
    options = dict(n_layers=2, n_latents=32, k=4, steps=30, log=lambda m: None)

    def study():  # (each call trains afresh: the activations are cached, the crosscoder is not reused)
        result = run_features(tmp_path / "r", **options)
        return {k: v for k, v in result.items() if k != "train_seconds"}

    outside = study()
    for enter in (torch.no_grad, torch.inference_mode, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):
        with enter():
            assert study() == outside
