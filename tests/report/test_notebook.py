"""What a notebook shows for a run, a compare and a lineage (``_repr_html_``): the verdict, its
sentence and the headline numbers as the reports print them, every text escaped."""

from __future__ import annotations

import re
from html import unescape

from crosspatch.report.markdown import fmt_effect
from crosspatch.report.notebook import compare_card, lineage_card
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair

from ..test_store import many_prompts


def _text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_a_run_shows_its_verdict_sentence_and_headline_numbers(tmp_path):
    result = run(make_pair("llama"), many_prompts(8), boundary=2, max_new_tokens=6, bootstrap=200, progress=False,
                 out=tmp_path / "run")
    card = result._repr_html_()
    verdict = result.summary["verdict"]
    block = result.summary["results"][str(verdict["boundary"])]["common_it"]["all"]
    text = _text(card)
    assert verdict["verdict"] in text and unescape(_text(verdict["reason"])) in text
    for name in ("E_PT", "E_IT", "interaction", "late_interaction_share"):
        assert fmt_effect(block, name) in text
    assert str(tmp_path / "run" / "report.html") in text
    assert "run_dir" not in card and "<script" not in card


def test_compare_and_lineage_cards_escape_every_name():
    stat = {"mean": 0.5, "ci": [0.25, 0.75]}
    effects = {"E_PT": stat, "E_IT": stat, "interaction": {"mean": -0.3, "ci": [-0.5, -0.1]},
               "late_interaction_share": {"mean": 0.3, "ci": [0.1, 0.5]}}
    card = compare_card({"base": "<b>base</b>", "rows": {"<script>x</script>": {
        "verdict": "portable", "effects": effects, "events": 12}}})
    assert "<script>x" not in card and "<b>base" not in card
    assert "&lt;script&gt;x&lt;/script&gt;" in card and "-0.30 [-0.50, -0.10]" in _text(card)
    assert "30% [10%, 50%]" in _text(card)
    empty = lineage_card({"stages": [], "events": 0, "boundary": 3})
    assert "0 stage(s)" in _text(empty) and "Base -> Final" in _text(empty)
    assert "Settings" not in _text(card) + _text(empty)  # nothing chosen, nothing said


def test_cards_name_the_settings_that_change_what_their_numbers_read(tmp_path):
    # a run under a policy of its own, or over chat-templated prompts, showed a notebook card that
    # did not say so, though both reports name it; a compare's and a lineage's cards did the same
    result = run(make_pair("llama"), many_prompts(6), boundary=2, max_new_tokens=4, bootstrap=0, progress=False,
                 policy={"min_late_effect": 0.125})
    assert "Settings: policy: min_late_effect 0.125" in _text(result._repr_html_())
    chosen = {"settings": [["chat template", "every prompt <rendered>"]]}
    for card in (compare_card({"base": "b", "rows": {}, **chosen}),
                 lineage_card({"stages": [], "events": 0, "boundary": 3, **chosen})):
        assert "Settings: chat template: every prompt <rendered>" in _text(card) and "<rendered>" not in card


def test_a_preflight_shows_pass_or_fail_and_each_check():
    from crosspatch.workflows.preflight_policy import PreflightResult

    document = {"passed": False, "checks": [
        {"name": "adapter-active", "status": "fail", "summary": "every LoRA B matrix is zero <b>"},
        {"name": "domain-learning", "status": "skip", "summary": "no --domain-text given"}]}
    card = PreflightResult(document)._repr_html_()
    text = _text(card)
    assert "FAIL" in text and "adapter-active" in text and "every LoRA B matrix is zero <b>" in text
    assert "zero <b>" not in card and "Full report" not in text


def test_a_splice_shows_each_chimeras_pass_rate_and_agreement_with_the_tuned_model():
    from crosspatch.workflows.splice import SpliceResult

    chimeras = {"base-early+tuned-late": {"validator_pass_rate": 0.5, "same_as_tuned": 0.25},
                "tuned-early+base-late": {"validator_pass_rate": None, "same_as_tuned": 1.0}}
    card = SpliceResult({"prompts": {"count": 4}, "boundaries": {"3": {"chimeras": chimeras}}})._repr_html_()
    text = _text(card)
    assert "4 prompts" in text and "50% / 25%" in text and "— / 100%" in text and "base-early+tuned-late" in text
