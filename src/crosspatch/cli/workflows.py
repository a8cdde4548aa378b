"""The practitioner workflows' commands: ``preflight``, ``splice``, ``merge-check`` and ``env``
(docs/workflows.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import CrosspatchError, OptionError
from ..models.options import LoadOptions
from .app import _boundaries, _boundary, _crashed, _fail, _stdout, app, console, load_policy, print_warnings
from .options import command
from .targets import FIELDS, default_out, model_label

SAFE_LOADING = ("dtype", "device", "trust_remote_code", "allow_pickle", "allow_special_token_mismatch")


def _with_fields(prompts: Path | None, fields: str | None):
    """The prompt file as given, or, with ``--fields``, its prompts read with those columns."""
    if fields is not None and prompts is None:
        raise OptionError("--fields names the columns of --prompts: give --prompts too")
    if prompts is None or fields is None:
        return prompts
    from ..inputs.prompts import load_prompts

    return load_prompts(prompts, fields)


@app.command("preflight")
@command(only={"load": SAFE_LOADING})
def preflight_cmd(
    base: str = typer.Option(..., "--base", help="Base model: hub id or local directory."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="PEFT adapter directory on --base."),
    merged: Optional[str] = typer.Option(None, "--merged", help="A merged checkpoint (of --adapter, if given)."),
    merge_in_memory: Optional[str] = typer.Option(None, "--merge-in-memory", help="Merge --adapter with PEFT in memory, "
                                                  "weights rounded to float32|bfloat16|float16, and check that merge."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file (default: 8 built-in generic probes)."),
    fields: Optional[str] = typer.Option(None, "--fields", help=FIELDS, metavar="FIELD=COLUMN,..."),
    domain_text: Optional[Path] = typer.Option(None, "--domain-text", help="Held-out domain text: .txt (blank-line "
                                               "separated) or .jsonl with a 'text' field."),
    out: Optional[Path] = typer.Option(None, "--out", help="New directory for preflight.json/.md/.html, or a "
                                       "crosspatch run directory (adds a Preflight section to its reports)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Greedy budget per prompt and model."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Tolerances from a YAML/JSON file (PreflightPolicy fields)."),
    *,
    load: LoadOptions,
    as_json: bool = typer.Option(False, "--json", help="Print preflight.json for machines."),
) -> None:
    """Before you merge or ship: is the adapter active, does the merge compute what the adapter
    computes, do the models still generate sensibly, did the fine-tune learn its domain. Exit 0
    when every check passes, 1 when one fails, 2 for unusable input."""

    from ..store.files import json_document
    from ..workflows.preflight import preflight

    try:
        thresholds = load_policy(policy) if policy else {}
        result = preflight(base, adapter=adapter, merged=merged, prompts=_with_fields(prompts, fields), domain_text=domain_text, out=out,
                           policy=thresholds, max_new_tokens=max_new_tokens, options=load,
                           merge_in_memory=merge_in_memory,
                           progress=None if as_json else (lambda m: console.print(Text(m, style="dim"), soft_wrap=True)))
    except CrosspatchError as exc:
        _fail(exc)
    except Exception:  # exit 1 is a failed check: a crash is exit 2
        _crashed("preflight")
    if as_json:
        print(json_document(result.document), end="")
    else:
        table = Table(title=f"crosspatch preflight: {'PASS' if result.passed else 'FAIL'}")
        for column in ("check", "status", "finding"):
            table.add_column(column, overflow="fold")
        colours = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}
        for check in result.document["checks"]:
            table.add_row(check["name"], Text(check["status"], style=colours[check["status"]]), check["summary"])
        _stdout().print(table)
        print_warnings(result.document.get("warnings"))
        if out is not None:
            console.print(f"written: {out}/preflight.md, preflight.html, preflight.json")
    raise typer.Exit(code=result.exit_code)


@app.command("splice")
@command(only={"load": SAFE_LOADING})
def splice_cmd(
    base: str = typer.Option(..., "--base", help="Base model: hub id or local directory."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file (validators, if any, give pass rates)."),
    fields: Optional[str] = typer.Option(None, "--fields", help=FIELDS, metavar="FIELD=COLUMN,..."),
    tuned: Optional[str] = typer.Option(None, "--tuned", help="Descendant: full or merged checkpoint."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Descendant: PEFT adapter directory on --base."),
    boundary: Optional[str] = typer.Option(None, "--boundary", help="Boundary layer (int) or depth fraction (default 0.6)."),
    boundaries: Optional[str] = typer.Option(None, "--boundaries", help="Comma-separated boundaries, or 'all'."),
    out: Optional[Path] = typer.Option(None, "--out", help="New directory for splice.json/.md/.html (default: "
                                       "runs/BASE__DESCENDANT-splice, named after the models)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Greedy budget per prompt and chimera."),
    no_diagnostic: bool = typer.Option(False, "--no-diagnostic", help="Skip the cross-patching run at the same boundaries."),
    *,
    load: LoadOptions,
) -> None:
    """What a layer-range merge would write: the four static chimeras (base/tuned early layers x
    base/tuned late layers) generate freely on the prompts, side by side, with validator pass
    rates, where each departs from the tuned model, and the cross-patching numbers there."""
    from ..workflows.splice import splice

    try:
        if boundary is not None and boundaries is not None:
            raise OptionError("give --boundary or --boundaries, not both")
        chosen = _boundaries(boundaries) if boundaries is not None else [_boundary(boundary or "0.6")]
        out = out if out is not None else default_out(base, [tuned or adapter or "descendant"], "splice")
        result = splice(base, tuned=tuned, adapter=adapter, prompts=_with_fields(prompts, fields), boundaries=chosen, out=out,
                        max_new_tokens=max_new_tokens, options=load, run_diagnostic=not no_diagnostic,
                        progress=lambda m: console.print(Text(m, style="dim"), soft_wrap=True))
    except CrosspatchError as exc:
        _fail(exc)
    from ..report.notebook import splice_table

    table = Table(title="crosspatch splice: validator pass rate / same as tuned")
    header, rows = splice_table(result.document)
    table.add_column(header[0])
    for column in header[1:]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    _stdout().print(table)
    print_warnings(result.document.get("warnings"))
    console.print(f"written: {out}/splice.html (continuations side by side), splice.md, splice.json")


@app.command("merge-check")
@command(only={"load": ("dtype", "device")})
def merge_check_cmd(
    config: Path = typer.Argument(..., metavar="CONFIG", help="A mergekit configuration (YAML)."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file."),
    fields: Optional[str] = typer.Option(None, "--fields", help=FIELDS, metavar="FIELD=COLUMN,..."),
    base: Optional[str] = typer.Option(None, "--base", help="The base the merged models descend from (default: the "
                                       "configuration's base_model; a passthrough splice: its first slice's model)."),
    out: Optional[Path] = typer.Option(None, "--out", help="New directory for merge-check.json/.md/.html (default: "
                                       "runs/CONFIG-merge-check, named after the configuration file)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Greedy budget per prompt and model."),
    *,
    load: LoadOptions,
) -> None:
    """Evaluate a mergekit configuration before you ship the merge: a passthrough layer splice as
    `crosspatch splice` at its boundary; a weight merge (linear, TIES, DARE, SLERP, ...) built with
    mergekit into a temporary directory, preflighted and diagnosed beside its parents. Needs
    `pip install 'crosspatch[merge]'`."""
    from ..workflows.mergecheck import merge_check

    out = out if out is not None else Path("runs") / f"{model_label(Path(str(config)).stem)}-merge-check"
    try:
        document = merge_check(config, _with_fields(prompts, fields), base=base, out=out, max_new_tokens=max_new_tokens,
                               options=load,
                               progress=lambda m: console.print(Text(m, style="dim"), soft_wrap=True))
    except CrosspatchError as exc:
        _fail(exc)
    if document["kind"] == "splice":
        _stdout().print(f"{document['this_chimera']} at layer {document['plan']['boundary']}: {document['receives']}; "
                        f"verdict {document.get('verdict')}", soft_wrap=True)
    else:
        table = Table(title=f"crosspatch merge-check: {document['method']} merge vs its parents (against the base)")
        for column in ("model", "E_PT", "E_IT", "interaction", "verdict"):
            table.add_column(column)
        from ..workflows.splice import _ci

        for role, v in document["diagnostic"].items():
            table.add_row(role, _ci(v.get("E_PT")), _ci(v.get("E_IT")), _ci(v.get("interaction")), str(v.get("verdict")))
        _stdout().print(table)
        console.print(f"preflight of the merge: {'pass' if document['preflight']['passed'] else 'FAIL'}")
    console.print(f"written: {out}/merge-check.md, merge-check.html, merge-check.json")


@app.command("env")
@command(only={"load": ("dtype", "device")})
def env_cmd(
    base: Optional[str] = typer.Option(None, "--base", help="With --tuned/--adapter: say which residency a run would use."),
    tuned: Optional[list[str]] = typer.Option(None, "--tuned", metavar="DIR", help="A descendant checkpoint (repeatable)."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", metavar="DIR", help="A PEFT adapter directory (repeatable)."),
    *,
    load: LoadOptions,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for machines."),
) -> None:
    """What crosspatch runs on: versions, devices and memory, what --dtype auto resolves to, the
    optional extras, headless Chromium for the report tests; with --base and a descendant, the
    residency a run would choose and why (nothing is loaded)."""
    import os

    import torch

    from ..models.loading import validate_load_options
    from ..report.browser import find_chromium
    from ..store import environment, package_version
    from ..store.files import json_document

    try:
        options = load
        dtype, device = load.dtype, load.device  # as given, before they resolve
        validate_load_options(options)
        facts = environment()
        facts["cpu_count"] = os.cpu_count()
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        facts["memory_gib"] = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None
        facts["cuda_devices"] = [{"name": torch.cuda.get_device_name(i),
                                  "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                                 for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        facts["device_auto"] = options.device if device == "auto" else None
        facts["device"] = options.device
        facts["dtype_auto"] = options.dtype if dtype == "auto" else None
        facts["dtype"] = options.dtype
        facts["extras"] = {name: package_version(name) for name in ("trl", "datasets", "mergekit", "ray")}
        facts["chromium"] = find_chromium()
        from ..models.digests import cache_dir

        digests = cache_dir()  # where large weight files' sha256 are remembered
        facts["digest_cache"] = str(digests) if digests is not None else "off"
        if base is not None:
            from ..execution import choose_residency

            if not tuned and not adapter:
                raise OptionError("with --base give --tuned and/or --adapter: the residency depends on the descendants")
            from ..models.paths import check_model_path, looks_local

            for path, role, is_adapter in ([(base, "base", False)] + [(p, "tuned", False) for p in tuned or []]
                                           + [(p, "tuned", True) for p in adapter or []]):
                if looks_local(str(path)):  # as a run would refuse them (hub ids are not looked up here)
                    check_model_path(str(path), role, adapter=is_adapter)
            residency, reason = choose_residency(base, list(tuned or []), list(adapter or []), options)
            facts["residency"] = {"choice": residency, "reason": reason}
    except CrosspatchError as exc:
        _fail(exc)
    if as_json:
        print(json_document(facts), end="")
        return
    table = Table(title="crosspatch env")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v if v is not None else 'not installed'}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in value) or "none"
        table.add_row(key, "not found" if value is None else str(value))
    _stdout().print(table)
