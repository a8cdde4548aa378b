"""The committed zoo: hashes, loadable checkpoints, reproducible data, verified learning."""

from __future__ import annotations

import json

import pytest

from crosspatch.analyses.features import load_crosscoder
from crosspatch.zoo import (
    ADAPTERS,
    DESCENDANTS,
    FAULTY,
    NULLS,
    VISION,
    ZooIntegrityError,
    load_zoo_pair,
    load_zoo_vision_pair,
    manifest,
    verify,
    zoo_path,
    zoo_prompts,
)
from crosspatch.zoo.assemble import build_zoo
from crosspatch.zoo.build import CROSSCODER, ZooSpec, build_data
from crosspatch.zoo.lineage import LINEAGE

MAX_ZOO_BYTES = 40 * 1024 * 1024


def test_every_committed_file_matches_the_manifest():
    man = verify()
    assert man["rebuild_command"].startswith("crosspatch zoo build")
    total = sum((zoo_path() / rel).stat().st_size for rel in man["files"])
    assert total < MAX_ZOO_BYTES and man["size_bytes"] == total
    # the manifest says how long the build took and where it ran
    assert man["build_seconds"] > 0 and man["build_machine"]["device"] == "cpu"


def _recorded_model_paths(root) -> list[str]:
    """Every ``*name_or_path`` value in the zoo's model and adapter configs, with its file."""
    import json

    found = []

    def walk(value, where):
        if isinstance(value, dict):
            for key, item in value.items():
                if key.endswith("name_or_path") and item:
                    found.append(f"{where}: {key}={item}")
                walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, where)

    for path in sorted(root.rglob("*config.json")):
        walk(json.loads(path.read_text()), path.relative_to(root))
    return found


def test_no_checkpoint_names_a_model_by_the_build_machines_path():
    """A model or adapter config records no path of the machine that built the zoo (a
    ``base_model_name_or_path`` of ``/tmp/...`` names a model no user has)."""
    assert _recorded_model_paths(zoo_path()) == []


def test_the_vision_language_pair_loads_with_its_processor_and_its_chart_prompts():
    pair = load_zoo_vision_pair()
    prompts = list(zoo_prompts("charts"))
    assert prompts and all(p.metadata["image"].endswith(".png") for p in prompts)
    assert {p.category for p in prompts} == {"temperature", "frontal system", "pressure system", "synoptic feature",
                                             "events"}
    assert pair.num_layers == manifest()["spec"]["num_layers"] and not pair.warnings
    evals = manifest()["evals"]
    # the base reads the charts (captions of held-out charts), the descendant reports from them: its held-out
    # report accuracy beats the base's on every aspect
    assert evals[VISION[0]]["chart_caption_accuracy"] >= 0.5
    for key, value in evals[VISION[1]].items():
        if key.startswith("chart_report_accuracy"):
            assert value >= 0.5 and value > evals[VISION[0]][key], key


def test_a_changed_file_is_detected(tmp_path):
    import shutil

    copy = tmp_path / "zoo"
    shutil.copytree(zoo_path(), copy)
    card = copy / "base" / "README.md"
    card.write_text(card.read_text() + "tampered\n")
    with pytest.raises(ZooIntegrityError, match="base/README.md"):
        verify(copy)


@pytest.mark.parametrize("name", DESCENDANTS)
def test_every_checkpoint_loads_as_a_pair(name):
    pair = load_zoo_pair(name)
    assert pair.num_layers == manifest()["spec"]["num_layers"]
    assert pair.residency == ("adapter" if name in ADAPTERS else "both")
    assert not pair.warnings


def _content(path):
    """What a zoo data file says, independent of the library versions that serialised it:
    decompressed text for .gz (zlib versions differ in bytes), the vocabulary, merges, added
    tokens and processors for tokenizer.json (tokenizers versions differ in layout)."""
    import gzip
    import json

    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode()
    if path.name == "tokenizer.json":
        d = json.loads(path.read_text())
        return {"vocab": d["model"]["vocab"], "merges": [list(m) if not isinstance(m, str) else m.split(" ")
                                                         for m in d["model"]["merges"]],
                "added": [(t["id"], t["content"]) for t in d["added_tokens"]],
                "post": d["post_processor"], "pre": d["pre_tokenizer"]["type"]}
    if path.name == "tokenizer_config.json":
        d = json.loads(path.read_text())
        return {k: d.get(k) for k in ("bos_token", "eos_token", "pad_token")}
    return path.read_bytes()


@pytest.mark.slow
def test_build_code_reproduces_committed_tokenizer_and_data(tmp_path):
    man = manifest()
    build_data(ZooSpec(**man["spec"]), tmp_path)
    rebuilt = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {str(p.relative_to(tmp_path)) for p in rebuilt} == {
        rel for rel in man["files"] if rel.split("/")[0] in ("data", "prompts", "tokenizer")
        and rel != "prompts/charts.jsonl"}  # (the vision pair's prompts: below)
    for path in rebuilt:
        rel = path.relative_to(tmp_path)
        assert _content(path) == _content(zoo_path() / rel), f"{rel} differs from the committed file"
    # the vision pair's image prompts and charts (zoo/vision.py) are drawn again identically
    import numpy as np
    from PIL import Image

    from crosspatch.zoo.vision import CHART_PROMPTS, chart_days, chart_prompt_rows

    spec = ZooSpec(**man["spec"])
    rows = chart_prompt_rows(chart_days(spec.vision_prompts, spec.seed + 504), tmp_path / CHART_PROMPTS)
    shipped = [json.loads(line) for line in (zoo_path() / "prompts" / "charts.jsonl").read_text().splitlines()]
    assert rows == shipped
    for row in rows:
        name = row["image"].split("/")[-1]
        drawn, committed = (np.asarray(Image.open(d / CHART_PROMPTS / name)) for d in (tmp_path, zoo_path()))
        assert (drawn == committed).all(), name
    # the committed files are the ones the manifest hashes (so the comparison above is to them)
    verify()


def test_descendants_learned_their_own_objective():
    evals = manifest()["evals"]
    base = evals["base"]
    for name in ("it-full", "it-lora-all", "it-lora-late", "it-merged"):
        assert evals[name]["instruction_loss_in_distribution"] < 0.8 * base["instruction_loss_in_distribution"]
    for held_out in ("instruction_loss_held_out_offices", "instruction_loss_held_out_regions"):
        assert evals["it-full"][held_out] < base[held_out]
    assert evals["cpt"]["raw_text_loss"] <= base["raw_text_loss"] + 0.01
    # the narrow-domain descendant learned unit conversions (held-out regions), and only that
    assert evals["it-units"]["unit_conversion_loss"] < 0.3 * base["unit_conversion_loss"]
    assert evals["it-units"]["unit_conversion_loss"] < 0.3 * evals["it-full"]["unit_conversion_loss"]
    # the lineage, SFT -> RFT -> DPO: each stage improves what it optimises
    assert LINEAGE == ("lineage-sft", "lineage-rft", "lineage-dpo")
    sft, rft, dpo = (evals[name] for name in LINEAGE)
    assert sft["instruction_loss_in_distribution"] < 0.2 * base["instruction_loss_in_distribution"]
    assert rft["validator_pass_rate"] > base["validator_pass_rate"] and rft["rft_samples_kept"] > 0
    assert rft["validator_pass_rate"] >= sft["validator_pass_rate"] - 0.02
    assert dpo["preference_margin"] > rft["preference_margin"] and dpo["preference_margin"] > base["preference_margin"]
    # the additions: the fragile adapter and the seed twin learned the reports; the generic LoRA raw text only
    for name in ("it-lora-fragile", "it-full-seed2"):
        assert evals[name]["instruction_loss_in_distribution"] < 0.2 * base["instruction_loss_in_distribution"]
    generic = evals["lora-generic"]
    assert generic["raw_text_loss"] <= base["raw_text_loss"] + 0.01
    assert generic["instruction_loss_in_distribution"] > 0.8 * base["instruction_loss_in_distribution"]
    for name in DESCENDANTS + LINEAGE + NULLS + ("base",):
        card = (zoo_path() / name / "README.md").read_text()
        assert "held-out" in card and str(manifest()["spec"]["seed"]) in card
    for name in FAULTY:  # each broken model's card says what is wrong with it
        assert "preflight" in (zoo_path() / name / "README.md").read_text()


@pytest.mark.slow
def test_smoke_build_trains_every_recipe_and_the_demo_runs_on_it(tmp_path):
    from crosspatch.zoo.demo import run_demo

    spec = ZooSpec(raw_docs=300, cpt_docs=100, instruction_pairs=120, eval_docs=40, eval_pairs=16,
                   pretrain_steps=3, it_steps=2, lora_steps=2, cpt_steps=2, batch_size=4, seq_len=64,
                   prompts_per_aspect=1, vocab_size=400, lineage_sft_steps=2, dpo_steps=2, rft_steps=2,
                   rft_prompts=4, rft_samples=2, crosscoder_steps=5, crosscoder_prompts_per_aspect=1, fragile_steps=2,
                   it_lr=0.05, vision_charts=8, vision_eval_charts=2, vision_prompts=5, vision_pretrain_steps=2,
                   vision_it_steps=2)  # (it_lr: so that it-full and the base diverge at all after two steps)
    build_zoo(tmp_path / "zoo", spec, log=lambda m: None)
    for name in ("base",) + DESCENDANTS + LINEAGE + NULLS + FAULTY + VISION + (CROSSCODER,):
        assert (tmp_path / "zoo" / name / "README.md").exists()
    assert set(manifest(tmp_path / "zoo")["build_seconds_by_stage"]) >= {"data, tokenizer and base", "vision-language pair"}
    assert load_crosscoder(tmp_path / "zoo" / CROSSCODER).config.layers
    verify(tmp_path / "zoo")
    assert _recorded_model_paths(tmp_path / "zoo") == []
    demo = run_demo(tmp_path / "demo", root=tmp_path / "zoo", max_new_tokens=6, bootstrap=100,
                    progress=False, log=lambda m: None, full=True)
    assert set(demo.summary["descendants"]) == set(DESCENDANTS)
    assert (tmp_path / "demo" / "report.md").read_text().startswith("# crosspatch demo")
    assert demo.summary["vision"]["prompts"] == 5 and set(demo.summary["preflight"]) == {
        "preflight-noop-adapter", "preflight-broken-merge"}
    for name in DESCENDANTS:
        counts = demo.summary["descendants"][name]["counts"]
        assert counts["events"] + counts["invalid"] + sum(counts["no_divergence"].values()) == demo.summary["prompts"]


@pytest.mark.slow
def test_quick_demo_on_the_embedded_zoo(tmp_path):
    from crosspatch.zoo.demo import STRATA, demo_prompts, prompt_strata, quick_prompts, run_demo

    demo = run_demo(tmp_path / "demo", bootstrap=100, progress=False, log=lambda m: None, quick=True)
    n = len(quick_prompts(demo_prompts()))
    assert demo.summary["prompts"] == n and n >= 50
    # stratified: every style, city split and house style the report compares is still there, about a quarter each
    full, quick = prompt_strata(demo_prompts()), demo.summary["prompt_strata"]
    for key in STRATA:
        assert set(quick[key]) == set(full[key]), key
        assert all(full[key][v] // 4 <= quick[key][v] <= full[key][v] // 4 + 3 for v in full[key]), key
    assert "--quick" in (tmp_path / "demo" / "report.md").read_text()
    from crosspatch.core.verdict import VERDICTS
    from crosspatch.report.check import check_report

    for name, s in demo.summary["descendants"].items():
        assert s["counts"]["prompts"] == n and s["verdict"]["verdict"] in VERDICTS, name
        # every number each descendant's two reports print comes from its stored data
        assert check_report(tmp_path / "demo" / name) == [], name
    html = (tmp_path / "demo" / "it-full" / "report.html").read_text()
    assert '<a href="../report.html">' in html
    # each member run says which prompts it read: the zoo's files, a quarter of each stratum
    source = json.loads((tmp_path / "demo" / "it-full" / "config.json").read_text())["prompts"]["source"]
    assert "raw.jsonl" in source and "units.jsonl" in source and "--quick" in source
    assert "prompt set: the zoo's prompts" in (tmp_path / "demo" / "it-full" / "report.md").read_text()
    # the combined page opens with the one-table answer: every descendant's verdict before any prose
    page = (tmp_path / "demo" / "report.html").read_text()
    answer = page.index("<h2>The answer</h2>")
    assert answer < page.index("<h2>Reading</h2>") and page.index("<h1>") < answer
    table = page[answer:page.index("</table>", answer)]
    for name, s in demo.summary["descendants"].items():
        assert f"<td>{name}</td><td>{s['verdict']['verdict']}</td>" in table, name
    # held-out offices and held-out regions are separate rows; each verdict has its sentence
    assert "<td>held-out offices</td>" in page and "<td>held-out regions</td>" in page
    assert all(f"<strong>{name}</strong> came out" in page for name in demo.summary["descendants"])
    # preflight catches both broken models, naming what failed
    pre = demo.summary["preflight"]
    assert pre["preflight-noop-adapter"]["causes"].keys() == {"adapter-active"}
    assert "adapter-vs-merged" in pre["preflight-broken-merge"]["causes"]
    assert page.count("Preflight caught") == 2 and "Preflight MISSED" not in page
    # the vision-language pair ran on image prompts, its events shown beside their charts
    vision = demo.summary["vision"]
    assert vision["effects"]["n_events"] > 0 and vision["events"]
    _charts_beside_events_in_chromium(tmp_path / "demo" / "report.html", len(vision["events"]))


def _charts_beside_events_in_chromium(page, n_events: int) -> None:
    """In headless Chromium, every shown event's chart decodes (a real image, not a broken icon) and
    is laid out in the same table row as the event's tokens, to their left."""
    import re

    from crosspatch.report.browser import find_chromium, load

    if find_chromium() is None:
        pytest.skip("no chromium binary (the CI script installs Debian's chromium with apt)")
    probe = """<script>window.addEventListener('load', () => {
      const rows = [...document.querySelectorAll('table.chart-events tr')].slice(1);
      const ok = rows.filter(tr => { const img = tr.querySelector('img'); const cells = tr.querySelectorAll('td');
        if (!img || !img.complete || img.naturalWidth === 0 || cells.length < 5) return false;
        const a = img.getBoundingClientRect(), b = cells[4].getBoundingClientRect();
        return a.width > 0 && a.right <= b.left && a.top < b.bottom && b.top < a.bottom; });
      document.body.setAttribute('data-chart-rows', rows.length + '/' + ok.length); });</script>"""
    probed = page.with_name("probe.html")
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    dom, errors = load(probed)
    assert errors == []
    found = re.search(r'data-chart-rows="(\d+)/(\d+)"', dom)
    assert found and int(found.group(1)) == int(found.group(2)) == n_events, found


@pytest.mark.slow
def test_the_shipped_fragile_adapter_is_upstream_dependent_on_clear_intervals():
    import crosspatch
    from crosspatch.zoo.demo import demo_prompts

    result = crosspatch.run(load_zoo_pair("it-lora-fragile"), demo_prompts(), max_new_tokens=48, bootstrap=1000,
                            event_kinds="first_diff", controls="none", consequence=False, batch_size=128, progress=False)
    share = result.verdict["numbers"]["late_interaction_share"]
    assert result.verdict.verdict == "upstream-dependent" and share["ci"][0] > 0.5, result.verdict.reason
    assert result.verdict["numbers"]["E_IT"]["ci"][0] > 1.0  # a real late effect, most of it upstream-dependent


@pytest.mark.slow
def test_the_demo_prompts_give_realistic_divergences_on_the_shipped_it_full():
    """On the demo's default prompt set the base continues the text (few events are base-EOS at
    position 0), most first divergences come after a shared stretch, and the base's tokens vary
    (properties of the shipped checkpoints, not timings)."""
    from crosspatch.runner.pipeline import run
    from crosspatch.zoo import load_zoo_pair
    from crosspatch.zoo.demo import demo_prompts

    pair = load_zoo_pair("it-full")
    prompts = demo_prompts()
    result = run(pair, prompts, max_new_tokens=48, bootstrap=0, progress=False, controls="none",
                 event_kinds="first_diff", batch_size=32)
    events = result.records
    assert len(events) >= 0.9 * len(prompts)
    eos_at_start = sum(r.position == 0 and r.t_pt in pair.eos_ids for r in events) / len(events)
    assert eos_at_start <= 0.10
    # (the zoo v3 set measured 37%: its observation logs, cut before a field's value, mostly diverge on the value)
    assert sum(r.position >= 3 for r in events) / len(events) >= 1 / 3
    assert len({r.t_pt for r in events}) >= 10


def test_zoo_build_refuses_to_overwrite_the_installed_zoo_unless_asked():
    from typer.testing import CliRunner

    from crosspatch.cli import app

    before = (zoo_path() / "manifest.json").read_text()
    res = CliRunner().invoke(app, ["zoo", "build"])
    assert res.exit_code == 2 and "OptionError" in res.output and "--into-package" in res.output
    res = CliRunner().invoke(app, ["zoo", "build", "--out", str(zoo_path())])
    assert res.exit_code == 2
    assert (zoo_path() / "manifest.json").read_text() == before


def test_instruction_batches_are_what_trls_sft_trainer_trains_on(tmp_path):
    """The zoo's own loop (it-full, the LoRA adapters, it-units) and TRL's SFTTrainer (the
    lineage) see the same tokens and put the loss on the same positions: the report and its EOS."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from crosspatch.zoo import data as wx
    from crosspatch.zoo.build import instruction_batch, new_model

    tok = AutoTokenizer.from_pretrained(zoo_path() / "tokenizer")
    pairs = wx.instruction_pairs(6, 3) + wx.unit_pairs(3, 3) + wx.instruction_pairs(3, 3, era="newer")
    cfg = SFTConfig(output_dir=str(tmp_path), max_steps=1, completion_only_loss=True, packing=False, report_to=[],
                    use_cpu=True)
    rows = Dataset.from_list([{"prompt": p["prompt"], "completion": p["response"]} for p in pairs])
    trainer = SFTTrainer(model=new_model(ZooSpec(), tok), args=cfg, processing_class=tok, train_dataset=rows)
    for k, p in enumerate(pairs):
        ids, mask, labels = instruction_batch([p], tok)
        n = int(mask[0].sum())
        assert trainer.train_dataset[k]["input_ids"] == ids[0, :n].tolist()
        assert trainer.train_dataset[k]["labels"] == labels[0, :n].tolist()


def test_the_demo_writes_only_into_a_new_or_earlier_demo_directory(tmp_path):
    from crosspatch.errors import RunDirectoryNotEmptyError
    from crosspatch.zoo.demo import DEMO_SCHEMA, check_demo_dir, run_demo

    check_demo_dir(tmp_path / "new")
    earlier = tmp_path / "earlier"
    (earlier / "it-full").mkdir(parents=True)
    (earlier / "summary.json").write_text(json.dumps({"schema_version": DEMO_SCHEMA}))
    (earlier / "report.html.tmp").write_text("<html")  # an earlier demo killed while writing its report
    check_demo_dir(earlier)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirectoryNotEmptyError, match="notes.txt"):
        run_demo(tmp_path / "mine", quick=True, progress=False, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text(json.dumps({"schema_version": "crosspatch.summary/1"}))
    with pytest.raises(RunDirectoryNotEmptyError, match="summary.json"):
        check_demo_dir(tmp_path / "other")


def test_a_zoo_build_never_removes_what_its_target_holds(tmp_path):
    from crosspatch.errors import OptionError, RunDirectoryNotEmptyError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirectoryNotEmptyError):
        build_zoo(mine, ZooSpec(), log=lambda m: None)
    with pytest.raises(RunDirectoryNotEmptyError):  # replacing is for a zoo only
        build_zoo(mine, ZooSpec(), log=lambda m: None, replace=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(RunDirectoryNotEmptyError):
        build_zoo(mine / "notes.txt", ZooSpec(), log=lambda m: None)
    for seed in (-1, 2**40, 1.5, True):
        with pytest.raises(OptionError):
            build_zoo(tmp_path / "new", ZooSpec(seed=seed), log=lambda m: None)  # type: ignore[arg-type]
    assert not (tmp_path / "new").exists()


def test_an_earlier_demo_run_is_replaced_without_touching_files_it_did_not_write(tmp_path):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair
    from crosspatch.zoo.demo import _clear_stale_demo_run

    from ..conftest import PROMPTS

    earlier = tmp_path / "it-full"
    run(make_pair("llama", layers=3, scale=0.2), PROMPTS[:2], max_new_tokens=4, bootstrap=0, controls="none",
        progress=False, out=earlier, title="crosspatch zoo: base vs it-full")
    (earlier / "notes.txt").write_text("keep me")
    said = []
    _clear_stale_demo_run(earlier, "crosspatch zoo: base vs it-full", said.append)
    assert said and sorted(p.name for p in earlier.iterdir()) == ["notes.txt"]
