"""The event explorer of report.html: one row per event, with every kind that falls on it."""

from __future__ import annotations

import re

from crosspatch.report.html import explorer_events


def test_one_row_per_event_with_every_kind_that_falls_on_it(tmp_path):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    from ..test_store import many_prompts

    result = run(make_pair("llama", scale=0.5), many_prompts(12), boundary=2, max_new_tokens=12, bootstrap=0,
                 progress=False, out=tmp_path / "r", controls="none")
    records = [r for r in result.records if r.boundary == 2]
    events = explorer_events(records)
    distinct = {(r.prompt_id, r.position, r.t_pt, r.t_it) for r in records}
    assert len(events) == len(distinct) and len(records) > len(events)  # kinds share events here
    for e in events:
        on_it = {r.kind for r in records if (r.prompt_id, r.position) == (e["prompt_id"], e["position"])}
        assert set(e["kinds"]) == on_it and e["kinds"][0] == sorted(e["kinds"], key=e["kinds"].index)[0]
    html = (tmp_path / "r" / "report.html").read_text()
    rows = re.findall(r'<tr class="event-row"[^>]*data-kinds="([^"]*)"', html)
    assert len(rows) == len(events) and any(len(k.split()) > 1 for k in rows)
