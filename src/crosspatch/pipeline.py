"""The one path: load models -> find divergences -> analyses (the 2x2, ...) -> statistics -> report.

``run`` works through the prompts in chunks (``process_chunk``: the divergence stage, then
each analysis, all as programs for the executor); an engine (local or Ray) runs the chunks and
each chunk's outcomes are appended to the run directory as soon as it is done, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .analysis import EventSet
from .cells import CellRecord, CellsConfig, CrossPatch, headline_boundary, resolve_boundary
from .kinds import EventKinds, parse_event_kinds, relabel
from .tokens import word_list
from .registry import PlanContext, enabled_plugins
from .summary import build_summary
from .verdict import VerdictPolicy
from .divergence import DivergenceConfig, NoDivergence, divergence_program, find_divergences
from .execution import Executor, ModelSet, map_chunks
from .execution.batching import chunk_size, state_cache_bytes as cache_bytes
from .models.execution import WorkCounter, counting_work
from .models.loading import DTYPES
from .models.vocab import tokenize_once
from .prompts import Prompt, as_prompts
from .report.markdown import render_markdown
from .report.render import render_reports
from .stats import BootstrapConfig
from .errors import BoundaryError, CrosspatchError, IncompleteRunError, OptionError, RunDirectoryError
from .validation import (
    check_chat_template, check_group_by, check_prompt_lengths, check_prompt_token_ids, parse_shard,
    validate_run_options,
)
from .store import (
    CONFIG_SCHEMA, EVENTS_FILE, NO_DIV_FILE, RunStore, completed_prompts, environment, events_frame, fingerprint, records_frame,
)


@dataclass
class RunConfig:
    """Options of one cross-patching run (all recorded in config.json)."""

    boundary: int | float = 0.6  # layer index, or fraction of depth
    boundaries: list[int | float] | str | None = None  # several at once, or "all" (1..L-1); overrides boundary
    max_new_tokens: int = 128
    # a batch holds at most batch_size sequences and max_batch_tokens padded tokens (prompt +
    # generation budget while decoding): the token budget sets the rows for the prompts at hand
    # (128 rows of a short prompt, fewer of long ones); batching changes speed, never results
    batch_size: int = 128
    max_batch_tokens: int | None = 16384
    rollout_model: str = "IT"
    near_tie_threshold: float = 0.05
    bootstrap: int = 2000
    seed: int = 0
    chat_template: bool = False  # apply the descendant's chat template to every prompt
    group_by: list[str] = field(default_factory=list)  # prompt metadata fields to break down by
    # "minimal": the rollout and the teacher-forced pass also supply both models' states (2 full
    # passes + 2 late-only passes per event); "exact": one more full pass of each model over the
    # prefix, which makes the exactness properties hold bit for bit across different passes.
    plan: str = "minimal"
    shard: str | None = None  # "i/n": this job takes prompts i, i+n, i+2n, ... (merge with merge_runs)
    engine: str = "local"  # "local" or "ray" (prompt chunks on Ray actors that each hold the models)
    workers: int = 2  # Ray actors
    sequential_chunk: int = 512  # prompts per load cycle with residency "sequential" (4 model loads each)
    title: str | None = None
    back_link: str | None = None  # report.html links back to this page (a combined report)
    tuned: str | None = None  # with several descendants loaded: the role scored against the base (default: the first)
    event_kinds: list[str] | str = "all"  # first_diff, first_nonformat_diff, first_assistant_marker_diff
    format_tokens: list[str] | str | None = None  # replaces the structural words counted as FORMAT (tokens.py)
    marker_words: list[str] | str | None = None  # replaces the assistant-marker words (a marker must be a whole word)
    controls: list[str] | str | None = "default"  # names, "all", "none" or "default" (controls.DEFAULT_CONTROLS)
    verify_fp32: bool = False  # re-run near-tie events' search in float32 and count how many move
    policy: dict | None = None  # verdict thresholds (verdict.VerdictPolicy fields)
    consequence: bool = False  # forced-token continuations scored by the prompts' validators
    consequence_budget: int = 32  # tokens generated after the forced token
    consequence_with_pt: bool = False  # also continue with the base
    until_ci_width: float | None = None  # stop once the interaction's 95% half-width is at most this (logits)
    nulls: list[str] = field(default_factory=list)  # null descendant roles of the model set (null calibration)
    synthetic_nulls: int = 0  # synthetic nulls of the descendant built in memory (docs/verdict.md)
    analyses: list[str] = field(default_factory=list)  # registered analyses to run beyond the default ones
    analysis_options: dict = field(default_factory=dict)  # {analysis name: {option: value}} (its options dataclass)


@dataclass
class RunResult:
    """What a run produced; ``events`` is a pandas DataFrame, one row per (event, boundary)."""

    summary: dict
    records: list[CellRecord]
    no_divergence: list[NoDivergence]
    config: dict
    run_dir: Path | None = None
    analyses: dict[str, list] = field(default_factory=dict)  # further analyses' records, by name
    _report: str | None = field(default=None, repr=False)

    @property
    def events(self):
        """One row per (event, boundary): the event kinds on it (``kinds``, ``is_<kind>``),
        identity, tokens, every cell, per-event effects (:func:`~crosspatch.store.events_frame`)."""
        return events_frame(self.records)

    @property
    def events_long(self):
        """The long form: one row per (event, event kind, boundary), as events.jsonl and
        events.parquet store them, with ``kind`` (:func:`~crosspatch.store.records_frame`)."""
        return records_frame(self.records)

    def to_pandas(self, long: bool = False):
        """:attr:`events` (or :attr:`events_long` with ``long=True``) as a pandas DataFrame."""
        return self.events_long if long else self.events

    @property
    def verdict(self):
        """The run's verdict (docs/verdict.md): a :class:`~crosspatch.verdict.VerdictView`, the
        stored ``{"verdict", "grade", "reason", "numbers", ...}`` dict with typed attributes
        (``.verdict``, ``.grade``, ``.reason``, ``.share``); None before a summary exists."""
        from .verdict import VerdictView

        stored = self.summary.get("verdict")
        return VerdictView(stored) if stored is not None else None

    def _blocks(self, boundary, readout: str):
        bs = [str(boundary)] if boundary is not None else self.summary["boundaries"]
        for b in bs:
            if b not in self.summary["results"]:
                raise KeyError(f"boundary {b} was not scored in this run (scored: {', '.join(self.summary['boundaries'])})")
            blocks = self.summary["results"][b]
            if readout not in blocks or readout == "readout_agreement":
                known = [k for k in blocks if k != "readout_agreement"]
                raise OptionError(f"no readout {readout!r}; readouts: {', '.join(known)}")
            yield b, blocks[readout]

    def effects(self, boundary: int | None = None, readout: str = "common_it", by: str | None = None):
        """A DataFrame of the effects with 95% intervals: one row per (boundary, group, effect).
        ``by``: a breakdown (``category``, ``position``, ``event_kind``, ``token_category`` or a
        ``--group-by`` field); default the headline (all first-divergence events)."""
        import pandas as pd

        rows = []
        for b, res in self._blocks(boundary, readout):
            if by is not None and f"by_{by}" not in res:
                known = sorted(k[3:] for k in res if k.startswith("by_"))
                raise OptionError(f"no breakdown by {by!r} in this run; breakdowns: {', '.join(known) or 'none'} "
                                  "(a prompt field becomes one with --group-by)")
            groups = {"all": res["all"]} if by is None else res[f"by_{by}"]
            for group, block in groups.items():
                for name, stat in block["effects"].items():
                    ci = stat.get("ci") or [None, None]
                    rows.append({"boundary": int(b), "group": group, "effect": name, "mean": stat["mean"],
                                 "ci_low": ci[0], "ci_high": ci[1], "n_events": block["n_events"],
                                 "n_prompts": block["n_prompts"], "note": stat.get("na_reason")})
        return pd.DataFrame(rows)

    def cells(self, boundary: int | None = None, readout: str = "common_it"):
        """A DataFrame of the four cell means with 95% intervals, per boundary."""
        import pandas as pd

        rows = []
        for b, res in self._blocks(boundary, readout):
            for cell, stat in res["all"]["cells"].items():
                ci = stat.get("ci") or [None, None]
                rows.append({"boundary": int(b), "cell": cell, "mean": stat["mean"], "ci_low": ci[0], "ci_high": ci[1],
                             "n_events": res["all"]["n_events"]})
        return pd.DataFrame(rows)

    def controls(self):
        """The Controls table as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in row.items() if k != "details"} for row in self.summary.get("controls", [])])

    def __repr__(self) -> str:
        counts = self.summary.get("counts", {})
        v = (self.verdict or {}).get("verdict", "n/a")
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return (f"RunResult(prompts={counts.get('prompts')}, events={counts.get('events')}, "
                f"boundaries={self.summary.get('boundaries')}, verdict={v!r}{where})")

    @property
    def report(self) -> str:
        if self._report is None:
            self._report = render_markdown(self.config, self.summary)
        return self._report


def _prompt_text(pair: ModelSet, prompt: Prompt, config: RunConfig) -> str:
    if not config.chat_template:
        return prompt.prompt
    return pair.tokenizers[config.tuned or pair.roles[1]].apply_chat_template(
        [{"role": "user", "content": prompt.prompt}], tokenize=False, add_generation_prompt=True
    )


def prompt_token_ids(pair: ModelSet, prompts: list[Prompt], tuned: str, config: RunConfig) -> list[list[int]]:
    """Token ids of every prompt, identical under the base's and ``tuned``'s tokenizers; an image
    prompt goes through both models' processors (which must agree) and its image is registered
    for the passes (:mod:`crosspatch.models.media`)."""
    import torch

    from .errors import PromptImageError
    from .models.media import encode_image_prompt

    token = pair.image_token_id
    images = [p.id for p in prompts if p.metadata.get("image")]
    if images and token is None:
        raise PromptImageError(f"prompt(s) {', '.join(images[:5])} have an image, but the base is a text-only model")
    if images and config.engine != "local":
        raise OptionError("image prompts run with the local engine (--engine local)")
    out = []
    for p in prompts:
        text = _prompt_text(pair, p, config)
        if not p.metadata.get("image"):
            # a chat template renders its special tokens (BOS too): adding them again doubles BOS
            ids = tokenize_once(pair.tokenizers[pair.base], pair.tokenizers[tuned], p.id, text,
                                add_special_tokens=not config.chat_template)
            if token is not None and token in ids:
                raise PromptImageError(f"prompt {p.id!r} holds the image placeholder but has no 'image' field")
            out.append(ids)
            continue
        processor_pt, processor_it = pair.processor(pair.base), pair.processor(tuned)
        ids, inputs = encode_image_prompt(processor_pt, p.id, text, p.metadata["image"])
        ids_it, inputs_it = (ids, inputs) if processor_it is processor_pt else \
            encode_image_prompt(processor_it, p.id, text, p.metadata["image"])
        same = ids == ids_it and inputs.keys() == inputs_it.keys() and all(
            inputs[k].shape == inputs_it[k].shape and torch.equal(inputs[k], inputs_it[k]) for k in inputs)
        if not same:
            raise PromptImageError(f"prompt {p.id!r}: the base's and {tuned!r}'s processors turn the image into "
                                   "different tokens or pixels; cross-patching needs one shared prefix")
        pair.media.register(p.id, ids, inputs)
        out.append(ids)
    return out


def _prompts_digest(prompts: list[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(f"{p.id}\x00{p.prompt}\x00{p.category}\x01".encode())
        if p.metadata.get("image"):  # an image prompt: the image's bytes are part of the prompt
            h.update(hashlib.sha256(Path(p.metadata["image"]).read_bytes()).digest())
    return h.hexdigest()


def build_config_record(pair: ModelSet, prompts: list[Prompt], config: RunConfig, boundaries: list[int],
                        shard_ids: list[str] | None = None) -> dict:
    options = asdict(config)
    digest = _prompts_digest(prompts)
    models = {k: v for k, v in pair.provenance.items() if k not in ("residency_reason", "load_spec", "reopen_spec")}
    models["load_options"] = {k: v for k, v in models.get("load_options", {}).items() if k != "residency"}
    result_parts = {  # what changes results; residency and batching only move float rounding
        "options": {k: v for k, v in options.items()
                    if k not in ("batch_size", "max_batch_tokens", "title", "back_link", "shard", "engine", "workers", "sequential_chunk",
                                 "verify_fp32", "policy", "until_ci_width")},
        "boundaries": boundaries,
        "models": models,
        "prompts": digest,
    }
    run_fingerprint = fingerprint(result_parts)
    return {
        "schema_version": CONFIG_SCHEMA,
        "title": config.title,
        "back_link": config.back_link,
        "options": options,
        "resolved_boundaries": boundaries,
        "num_layers": pair.num_layers,
        "residency": pair.residency,
        "models": {k: v for k, v in pair.provenance.items() if k not in ("load_spec", "reopen_spec")},
        # what reloads these models (after-the-fact analyses)
        "load_spec": pair.provenance.get("load_spec") or pair.provenance.get("reopen_spec"),
        "roles": list(pair.roles),
        "load_options": pair.provenance.get("load_options", {}),
        "prompts": {"count": len(prompts), "sha256": digest},
        "prompt_ids": shard_ids if shard_ids is not None else [p.id for p in prompts],  # this run's (shard's)
        "fingerprint_inputs": result_parts,
        "pair_warnings": pair.warnings,
        "real_vocabulary": pair.real_vocab.as_record(),
        "environment": environment(),
        "run_fingerprint": run_fingerprint,  # the same for every shard of one run
        "fingerprint": fingerprint({"run": run_fingerprint, "shard": config.shard}),
    }


def missing_prompts(prompt_ids: list[str], records: list[CellRecord], no_div: list[NoDivergence],
                    boundaries: list[int]) -> list[str]:
    """Prompts not accounted for: each prompt must have a first-divergence record at every
    boundary (valid or invalid) or a no-divergence outcome (events + no-divergence + invalid ==
    prompts)."""
    return [p for p in prompt_ids if p not in completed_prompts(records, no_div, boundaries)]


def check_complete(prompt_ids: list[str], records, no_div, boundaries, where: str) -> None:
    missing = missing_prompts(prompt_ids, records, no_div, boundaries)
    if missing:
        raise IncompleteRunError(
            f"{where}: {len(missing)} of {len(prompt_ids)} prompt(s) have no record ({', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''}); events + no-divergence + invalid must equal the prompts. "
            "If the run was interrupted or a file was truncated, run the same command again to redo them")


def with_nulls(pair: ModelSet, config: RunConfig, tuned: str) -> tuple[ModelSet, RunConfig]:
    """The model set and config with the run's null descendants checked (``config.nulls``: other
    descendant roles) and its synthetic nulls built (``config.synthetic_nulls``)."""
    bad = [n for n in config.nulls if n not in pair.descendants or n == tuned]
    if bad:
        others = ", ".join(r for r in pair.descendants if r != tuned) or "none"
        raise OptionError(f"nulls must name other descendant roles of the model set ({others}), "
                          f"not {', '.join(map(repr, bad))}")
    if not config.synthetic_nulls:
        return pair, config
    from .execution.nulls import with_synthetic_nulls

    pair, roles = with_synthetic_nulls(pair, tuned, config.synthetic_nulls, config.seed)
    return pair, replace(config, nulls=[*config.nulls, *roles], tuned=tuned)


def _processed_prompts(precision: dict | None, prompts: list[Prompt], records, no_div, boundaries) -> list[Prompt]:
    """The prompts this run accounts for: all of them, or with ``--until-ci-width`` those processed
    before the target was reached (the others are recorded in ``precision``)."""
    if precision is None:
        return prompts
    done = completed_prompts(records, no_div, boundaries)
    unprocessed = [p.id for p in prompts if p.id not in done]
    precision.update(prompts_processed=len(prompts) - len(unprocessed), prompts_total=len(prompts),
                     unprocessed=unprocessed)
    return [p for p in prompts if p.id in done]


def _reached(precision: dict, records, boundaries: list[int], num_layers: int, config: RunConfig) -> bool:
    """Whether the interaction's 95% half-width at the headline boundary (common-IT, first
    divergences, prompt-cluster bootstrap) is at most ``precision["target"]``; updates it."""
    from .stats import cell_matrix, effect_block

    headline = headline_boundary(boundaries, num_layers)
    first = [r for r in records if r.boundary == headline and r.kind == "first_diff" and r.valid]
    if not first:
        return False
    ci = effect_block(cell_matrix(first, "common_it"), [r.prompt_id for r in first],
                      BootstrapConfig(max(config.bootstrap, 200), config.seed))["effects"]["interaction"]["ci"]
    if ci is None or None in ci:
        return False
    precision["half_width"] = (ci[1] - ci[0]) / 2
    precision["reached"] = precision["half_width"] <= precision["target"]
    return precision["reached"]


def _precision_record(precision: dict) -> dict:
    """What ``--until-ci-width`` did, in words and numbers (summary.json ``until_ci_width``)."""
    out = {k: v for k, v in precision.items() if k != "unprocessed"}
    out["unprocessed_prompts"] = list(precision["unprocessed"])
    hw = precision["half_width"]
    out["message"] = (
        f"the interaction's 95% half-width reached {hw:.3f} <= {precision['target']} after "
        f"{precision['prompts_processed']} of {precision['prompts_total']} prompts; the other "
        f"{len(precision['unprocessed'])} were not processed (run again with a smaller width to add them)"
        if precision["reached"] else
        f"the prompts ran out: {precision['prompts_total']} processed, half-width "
        + (f"{hw:.3f}" if hw is not None else "n/a") + f" > {precision['target']} (add prompts)")
    return out


def select_shard(prompts: list[Prompt], shard: str | None) -> list[Prompt]:
    """Prompts of shard ``i/n``: positions i, i+n, i+2n, ... of the prompt list."""
    if shard is None:
        return prompts
    i, n = parse_shard(shard)
    return prompts[i::n]


def merge_runs(shard_dirs: list[str | Path], out: str | Path, bootstrap_override: int | None = None,
               overwrite: bool = False) -> RunResult:
    """Combine the run directories of shards ``0/n .. n-1/n`` of one run into ``out`` (a new or
    empty directory; ``overwrite`` replaces a crosspatch run there): events and no-divergence
    outcomes concatenated, statistics and report computed on the union. Every shard must be
    finished and complete (every prompt accounted for)."""
    if not shard_dirs:
        raise RunDirectoryError("give the run directories of the shards to merge")
    out_path = Path(out).resolve()
    if any(Path(d).resolve() == out_path for d in shard_dirs):
        raise RunDirectoryError(f"--out {out} is one of the shards; merge into a new directory")
    stores = [RunStore(d) for d in shard_dirs]
    configs = [st.config() for st in stores]
    fps = {c.get("run_fingerprint") for c in configs}
    if len(fps) != 1:
        raise RunDirectoryError("these run directories are not shards of one run (settings differ)")
    shards = sorted(parse_shard(c["options"]["shard"]) if c["options"].get("shard") else (0, 1) for c in configs)
    n = shards[0][1]
    if shards != [(i, n) for i in range(n)]:
        raise RunDirectoryError(f"shards {shards} do not cover 0/{n} .. {n - 1}/{n} exactly once")
    for st, cfg in zip(stores, configs):
        st.summary()  # every shard must have finished
        if "prompt_ids" in cfg:
            check_complete(cfg["prompt_ids"], st.load_records(), st.load_no_divergence(), cfg["resolved_boundaries"],
                           f"shard {st.path}")
    record = dict(configs[0])
    record["options"] = dict(record["options"], shard=None)
    if bootstrap_override is not None:
        record["options"]["bootstrap"] = bootstrap_override
    record["fingerprint"] = fingerprint({"run": record["run_fingerprint"], "shard": None})
    record["merged_from"] = [str(d) for d in shard_dirs]
    if all("prompt_ids" in c for c in configs):
        record["prompt_ids"] = [p for c in configs for p in c["prompt_ids"]]
    records = sorted((r for st in stores for r in st.load_records()), key=lambda r: (r.prompt_id, r.boundary))
    no_div = sorted((x for st in stores for x in st.load_no_divergence()), key=lambda x: x.prompt_id)
    prompts_count = sum(st.summary()["counts"]["prompts"] for st in stores)
    names = sorted({p.name for st in stores for p in st.path.glob("*.jsonl")} - {EVENTS_FILE, NO_DIV_FILE})
    analyses = {n[: -len(".jsonl")]: [row for st in stores for row in st.load_rows(n)] for n in names}
    opts = record["options"]
    summary = build_summary(record, records, no_div, prompts_count, BootstrapConfig(opts["bootstrap"], opts["seed"]),
                            analyses=analyses, run_dir=out)
    store = RunStore(out)
    with store.lock():  # one writer per run directory
        store.write_complete(record, records, no_div, overwrite=overwrite)
        for name, rows in analyses.items():
            store.write_rows(f"{name}.jsonl", rows)
        result = RunResult(summary, records, no_div, record, store.path, analyses)
        result._report = write_outputs(store, summary, records, record)
    return result


def normalise_run_config(config: RunConfig) -> RunConfig:
    """``config`` as a run records it, in place: word lists as the sorted words themselves (not a
    file's name)."""
    for option in ("format_tokens", "marker_words"):
        if getattr(config, option) is not None:
            setattr(config, option, sorted(word_list(getattr(config, option), f"--{option.replace('_', '-')}")))
    return config


def finished_result(out: str | Path, base: str, tuned: dict[str, str], adapters: dict[str, str], options,
                    prompts, config: RunConfig) -> RunResult | None:
    """The stored result of ``out`` when it already holds this very run, finished: the same load
    request (paths and load options), unchanged weight files (their sha256 recomputed), the same
    options, boundaries and prompts, every prompt done and a summary written. None otherwise (the
    caller loads the models and ``run`` resumes, refuses or replaces as usual). Nothing is loaded
    or written: the command that finished the run says so instantly."""
    import json
    from dataclasses import asdict, replace

    from .execution.modelset import choose_residency
    from .models.loading import provenance
    path = Path(out)
    if not (path / "config.json").is_file() or not (path / "summary.json").is_file():
        return None
    config = normalise_run_config(replace(config))
    if config.until_ci_width is not None or config.synthetic_nulls or config.verify_fp32:
        return None  # these decide or measure in the session itself
    store = RunStore(path)
    try:
        stored = store.config()
        options = replace(options)
        options.residency = options.residency or choose_residency(base, list(tuned.values()), list(adapters.values()),
                                                                  options)[0]
        spec = {"base": base, "tuned": tuned or None, "adapters": adapters or None,
                "options": {**vars(options), "hash_weights": False}}
        if json.loads(json.dumps(spec, default=str)) != stored.get("load_spec"):
            return None
        if json.loads(json.dumps(asdict(config), default=str)) != stored.get("options"):
            return None
        models = stored.get("models") or {}
        recorded = [models.get("base")] + ([models[k] for k in ("tuned", "adapter") if k in models]
                                           or list((models.get("descendants") or {}).values()))
        for entry in recorded:
            if entry is None or provenance(entry["path"], options).get("weights") != entry.get("weights"):
                return None  # a weight file changed (or was never hashed)
        all_prompts = as_prompts(prompts)
        if stored.get("fingerprint_inputs", {}).get("prompts") != _prompts_digest(all_prompts):
            return None
        boundaries = stored["resolved_boundaries"]
        if resolve_boundaries(config, stored["num_layers"]) != boundaries:
            return None
        records, no_div = store.load_records(), store.load_no_divergence()
        wanted = {p.id for p in select_shard(all_prompts, config.shard)}
        if not wanted <= completed_prompts(records, no_div, boundaries):
            return None
        summary = store.summary()
    except (CrosspatchError, OSError, KeyError, TypeError, ValueError):
        return None  # anything unusual: the normal path decides, with its named errors
    from .finished import stored_analyses

    return RunResult(summary, records, no_div, stored, path, stored_analyses(store))


def resolve_boundaries(config: RunConfig, num_layers: int) -> list[int]:
    """The sorted layer indices a run scores ("all" = every layer 1..L-1)."""
    if config.boundaries in ("all", ["all"]):
        if num_layers < 2:
            raise BoundaryError(f"boundaries 'all' (1..L-1) leave no boundary on a model of {num_layers} layer: "
                                "a boundary needs a layer on each side, so at least 2 layers")
        return list(range(1, num_layers))
    requested = config.boundaries if config.boundaries else [config.boundary]
    return sorted({resolve_boundary(b, num_layers) for b in requested})


def write_outputs(store: RunStore, summary: dict, records: list[CellRecord], config: dict) -> str:
    """summary.json, events.parquet, then the reports; returns the Markdown report."""
    store.write_summary(summary)
    store.write_parquet(records)
    return render_reports(store, summary, config)


@dataclass
class ChunkPlan:
    """What every chunk of a run does (picklable: it travels to Ray actors)."""

    boundaries: list[int]
    divergence: DivergenceConfig
    cells: CellsConfig
    analyses: list = field(default_factory=list)  # controls and further analyses, run on the same events
    tuned: str | None = None  # the descendant role scored against the base (default: the first)
    kinds: EventKinds | None = None  # event kinds beyond the first divergence


@dataclass
class ChunkResult:
    """One chunk's outcomes: events, no-divergence outcomes, 2x2 records, other analyses'
    records (by analysis name), and the work done in token-layers."""

    events: list
    no_divergence: list[NoDivergence]
    records: list[CellRecord]
    analyses: dict[str, list]
    token_layers: int


def process_chunk(models, plan: ChunkPlan, item) -> ChunkResult:
    """Search and score one chunk of prompts (``item`` = (prompts, token ids)): the unit of work
    of every engine. The stages are programs the executor runs, whatever the residency."""
    prompts, token_ids = item
    ex = Executor(models, plan.cells.batch_size, plan.cells.max_batch_tokens)
    tuned = plan.tuned or models.roles[1]
    with counting_work() as work:
        events, none, natural = ex.drive(divergence_program(prompts, token_ids, plan.divergence, models.base, tuned))
        evset = EventSet(events, models.base, tuned, natural)
        programs = [CrossPatch(plan.boundaries, plan.cells).program(ex, evset)]
        programs += [a.program(ex, evset) for a in plan.analyses]
        if plan.kinds is not None:
            programs.append(plan.kinds.program(ex, evset))
        values = ex.drive_all(programs)  # side by side: passes of one role grouped across analyses
        scored = values[0]
        others = {a.name: v for a, v in zip(plan.analyses, values[1:])}
        if plan.kinds is not None:  # written before the first divergence's records, which mark completion
            kind_records, twins = values[-1]
            scored = kind_records + relabel(scored, twins) + scored
    return ChunkResult(events, none, scored, others, work.token_layers)


def chunk_plan(config: RunConfig, boundaries: list[int], num_layers: int, analyses=(),
               validators: dict | None = None) -> ChunkPlan:
    """What every chunk runs: the search, the 2x2, and the analysis of every enabled plug-in
    (selected controls, default analyses, ``config.analyses``), then the ``analyses`` objects given
    in Python (``run`` has put the names of registered plug-ins into ``config.analyses``)."""
    div_cfg = DivergenceConfig(config.max_new_tokens, config.batch_size, config.rollout_model,
                               capture_boundaries=boundaries if config.plan == "minimal" else None,
                               max_batch_tokens=config.max_batch_tokens)
    context = PlanContext.for_run(config, boundaries, num_layers, validators)
    cells = context.cells
    kinds = parse_event_kinds(config.event_kinds)
    built = []
    for plugin in enabled_plugins(vars(config)):
        if plugin.build is None:
            continue
        analysis = plugin.build(plugin.make_options(config.analysis_options.get(plugin.name)), context)
        if analysis is not None:
            built.append(analysis)
    return ChunkPlan(boundaries, div_cfg, cells, built + list(analyses), config.tuned,
                     EventKinds(boundaries, kinds, config.max_new_tokens, config.rollout_model, cells)
                     if len(kinds) > 1 else None)


def _float32_models(models: ModelSet) -> ModelSet:
    """The same models in float32: reloaded from their paths, or copied when in memory."""
    import copy

    from .execution import load_models, models_from_modules
    from .models.loading import LoadOptions

    spec = models.provenance.get("load_spec")
    if spec is not None:
        opts = LoadOptions(**{**spec["options"], "dtype": "float32"})
        return load_models(spec["base"], tuned=spec["tuned"], adapters=spec["adapters"], options=opts)
    modules = {role: copy.deepcopy(models.handle(role).module).float() for role in models.roles}
    return models_from_modules(modules, models.tokenizer, models.tokenizers)


def verify_near_ties_fp32(models: ModelSet, prompts: list[Prompt], token_ids: list[list[int]],
                          records: list[CellRecord], config: RunConfig) -> dict:
    """Re-run the divergence search of near-tie events' prompts in float32; count the events whose
    position or tokens move (a low-precision near-tie decided them)."""
    dtype = models.provenance.get("load_options", {}).get("dtype", "float32")
    ties = {r.prompt_id: r for r in records if r.kind == "first_diff" and r.near_tie}
    if dtype == "float32" or not ties:
        return {"checked": 0, "moved": 0, "moved_prompts": [],
                "note": "the run is already float32" if dtype == "float32" else "no near-tie events"}
    idx = [k for k, p in enumerate(prompts) if p.id in ties]
    models32 = _float32_models(models)
    div = DivergenceConfig(config.max_new_tokens, config.batch_size, config.rollout_model,
                           max_batch_tokens=config.max_batch_tokens)
    events, none = find_divergences(models32, [prompts[k] for k in idx], [token_ids[k] for k in idx], div,
                                    tuned=config.tuned or models.roles[1])
    found = {e.prompt_id: (e.position, e.t_pt, e.t_it) for e in events}
    moved = sorted(pid for pid, r in ties.items() if found.get(pid) != (r.position, r.t_pt, r.t_it))
    models32.release()
    return {"checked": len(ties), "moved": len(moved), "moved_prompts": moved[:200]}


def state_cache_bytes(models: ModelSet, prompt_ids: list[list[int]], max_new_tokens: int, n_boundaries: int) -> int:
    """Upper bound of the CPU state cache of one chunk under sequential residency: both models'
    boundary and final states over prompt + budget tokens, in the compute dtype."""
    dtype = models.provenance.get("load_options", {}).get("dtype", "float32")
    itemsize = DTYPES[dtype].itemsize if dtype in DTYPES else 4
    tokens = sum(len(p) + max_new_tokens for p in prompt_ids)
    return cache_bytes("sequential", tokens, models.hidden_size, itemsize, n_boundaries)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        from rich.console import Console

        Console(stderr=True).print(message, soft_wrap=True, markup=False)


def _progress(enabled: bool):
    """Progress bars on a terminal; plain progress lines when standard error is not one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if enabled and not console.is_terminal:
        from .progress import LineProgress

        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not (enabled and console.is_terminal), transient=False,
    )


def run(
    pair: ModelSet,
    prompts,
    config: RunConfig | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    analyses=(),
    overwrite: bool = False,
    **overrides,
) -> RunResult:
    """Run the first-divergence 2x2 on ``prompts`` (Prompt objects, dicts or strings), and any
    further ``analyses`` (:class:`~crosspatch.analysis.Analysis`) on the same events; their
    records are in ``result.analyses[name]`` and ``<name>.jsonl``.

    With ``out``, records stream into that run directory (resumable) and the summary, Parquet
    table and report.md are written there. ``resume=False`` refuses a directory that already
    holds this run; ``overwrite=True`` replaces the crosspatch run in ``out`` (never other files)."""
    config = config or RunConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown run option {key!r}")
        setattr(config, key, value)
    named = [a for a in analyses if isinstance(a, str)]  # registered analyses given by name
    if named:
        config.analyses = list(dict.fromkeys([*config.analyses, *named]))
    analyses = [a for a in analyses if not isinstance(a, str)]
    validate_run_options(config)
    normalise_run_config(config)
    tuned = config.tuned or pair.roles[1]
    if tuned not in pair.descendants:
        raise OptionError(f"tuned must name a descendant role ({', '.join(pair.descendants)}), not {tuned!r}")
    pair, config = with_nulls(pair, config, tuned)
    all_prompts = as_prompts(prompts)
    run_warnings = check_group_by(list(config.group_by), all_prompts)
    if config.chat_template:
        check_chat_template(pair.tokenizers[tuned])
    boundaries = resolve_boundaries(config, pair.num_layers)
    from .consequence import validators_of

    validators = validators_of(all_prompts)
    if config.consequence and not validators:
        run_warnings.append("--consequence: no prompt carries a 'validator' field, so nothing is scored")
    plan = chunk_plan(config, boundaries, pair.num_layers, analyses, validators)  # validates kinds and controls
    VerdictPolicy.from_dict(config.policy or {})
    names = [a.name for a in plan.analyses]
    if len(set(names)) != len(names):
        raise OptionError(f"analysis names must be unique in a run: {names}")
    prompts = select_shard(all_prompts, config.shard)
    record = build_config_record(pair, all_prompts, config, boundaries, [p.id for p in prompts])
    record["run_warnings"] = run_warnings
    token_ids = prompt_token_ids(pair, prompts, tuned, config)
    check_prompt_lengths([p.id for p in prompts], token_ids, config.max_new_tokens,
                         pair.facts[pair.base].get("max_positions"),
                         config.consequence_budget if config.consequence and validators else None,
                         max([0] + [a.tokens_past_prompt() for a in plan.analyses]))
    check_prompt_token_ids([p.id for p in prompts], token_ids,
                           {role: pair.facts[role].get("input_embeddings") for role in pair.roles})
    store = RunStore(out) if out is not None else None
    with store.lock() if store is not None else contextlib.nullcontext():  # one process per run directory
        records: list[CellRecord] = []
        no_div: list[NoDivergence] = []
        if store is not None:
            records, no_div = store.start(record, resume=resume, overwrite=overwrite)
        done = completed_prompts(records, no_div, boundaries)
        todo = [k for k, p in enumerate(prompts) if p.id not in done]
        resumed = len(prompts) - len(todo)
        if resumed:
            _say(progress, f"resumed: {resumed} prompt(s) already done in {out}, {len(todo)} to go")
        by_id = {p.id: k for k, p in enumerate(prompts)}
        started = time.perf_counter()
        chunk = chunk_size(pair.residency, config.batch_size, config.sequential_chunk)
        dtype = pair.provenance.get("load_options", {}).get("dtype", "float32")
        size = cache_bytes(pair.residency, sum(len(token_ids[k]) + config.max_new_tokens for k in todo[:chunk]),
                           pair.hidden_size, DTYPES[dtype].itemsize if dtype in DTYPES else 4, len(boundaries))
        if size is not None and todo:
            batching = (f"batches of at most {config.max_batch_tokens:,} padded tokens" if config.max_batch_tokens
                        else "--max-batch-tokens bounds each batch's working memory")
            _say(progress, f"sequential residency: one model at a time; CPU state cache up to {size / 2**20:.1f} MiB; "
                           f"{batching} ({pair.provenance.get('residency_reason', '')})")
        event_work = 0
        work = WorkCounter()  # summed from the chunks (which may run in other processes)
        extra: dict[str, list] = {  # earlier sessions' records of prompts already complete
            a.name: [r for r in (store.load_rows(f"{a.name}.jsonl") if store is not None else []) if r.get("prompt_id") in done]
            for a in plan.analyses}
        with _progress(progress) if progress else contextlib.nullcontext() as bar:
            if bar:
                search_task = bar.add_task("divergence search (prompts)", total=len(prompts),
                                           completed=len(prompts) - len(todo))
                cells_task = bar.add_task(f"2x2 cells at {len(boundaries)} boundar{'y' if len(boundaries) == 1 else 'ies'} "
                                          "(records of the events found so far)", total=len(records), completed=len(records))
            items = [([prompts[k] for k in todo[start : start + chunk]], [token_ids[k] for k in todo[start : start + chunk]])
                     for start in range(0, len(todo), chunk)]
            precision = {"target": config.until_ci_width, "half_width": None, "reached": False} \
                if config.until_ci_width else None
            if precision is not None and _reached(precision, records, boundaries, pair.num_layers, config):
                items = []  # an earlier session already reached the target: nothing more to process
            try:
                for result in map_chunks(pair, process_chunk, plan, items, config.engine, config.workers):
                    # streamed: each chunk is stored as soon as it is done
                    work.add(result.token_layers, 1)
                    event_work += sum(len(e.prefix_ids) for e in result.events) * pair.num_layers
                    for rec in result.records:
                        meta = prompts[by_id[rec.prompt_id]].metadata
                        rec.extra.update({f: meta.get(f) for f in config.group_by})
                    if store is not None:
                        for name, rows in result.analyses.items():
                            store.append_rows(f"{name}.jsonl", rows)
                        # the 2x2 records last: a prompt counts as done once all its boundaries are stored
                        store.append_records(result.records)
                        store.append_no_divergence(result.no_divergence)
                    for name, rows in result.analyses.items():
                        extra[name] += [r.to_record() if hasattr(r, "to_record") else r for r in rows]
                    records += result.records
                    no_div += result.no_divergence
                    if bar:
                        bar.update(search_task, advance=len(result.events) + len(result.no_divergence))
                        bar.update(cells_task, total=len(records), completed=len(records))
                    if precision is not None and _reached(precision, records, boundaries, pair.num_layers, config):
                        break  # the interval is as narrow as asked: the remaining prompts are left, and said so
            finally:
                pair.release()
        processed = _processed_prompts(precision, prompts, records, no_div, boundaries)
        check_complete([p.id for p in processed], records, no_div, boundaries, str(out) if out is not None else "run")
        records.sort(key=lambda r: (by_id.get(r.prompt_id, len(by_id)), r.boundary))
        no_div.sort(key=lambda x: by_id.get(x.prompt_id, len(by_id)))
        boot = BootstrapConfig(config.bootstrap, config.seed)
        cost = {
            "plan": config.plan,
            "token_layers_executed": work.token_layers,
            "event_prefix_token_layers": event_work,
            "fe_per_event": round(work.token_layers / event_work, 3) if event_work else None,
            "seconds": round(time.perf_counter() - started, 3),
            "prompts_processed": len(todo) - (len(precision["unprocessed"]) if precision is not None else 0),
            "prompts_resumed": resumed,
        }
        extras = {"cost_this_session": cost}
        if precision is not None:
            extras["until_ci_width"] = _precision_record(precision)
        if config.verify_fp32:
            extras["fp32_verification"] = verify_near_ties_fp32(pair, prompts, token_ids, records, config)
        summary = build_summary(record, records, no_div, len(processed), boot, extras, extra, run_dir=out)
        result = RunResult(summary, records, no_div, record, Path(out) if out is not None else None, extra)
        if store is not None:
            result._report = write_outputs(store, summary, records, record)
        return result


@dataclass
class Rendered:
    """What ``crosspatch report`` produced: the Markdown text, the files written, warnings."""

    text: str
    files: list[Path]
    warnings: list[str]


def rerender_run(run_dir: str | Path) -> Rendered:
    """Re-render the reports from a run directory's stored files alone, after checking that
    every prompt of the run is accounted for (a warning names the missing ones)."""
    store = RunStore(run_dir)
    with store.lock():  # one writer per run directory
        return _rerender(store)


def _rerender(store: RunStore) -> Rendered:
    config, summary = store.config(), store.summary()
    warnings = []
    if "prompt_ids" in config:
        left = set((summary.get("until_ci_width") or {}).get("unprocessed_prompts") or [])  # by design
        missing = missing_prompts([p for p in config["prompt_ids"] if p not in left], store.load_records(),
                                  store.load_no_divergence(), config["resolved_boundaries"])
        if missing:
            warnings.append(f"{len(missing)} prompt(s) of this run have no record in events.jsonl or "
                            f"no_divergence.jsonl: {', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}; "
                            "the summary was computed before they went missing")
    text = render_reports(store, summary, config)
    files = [store.path / n for n in ("report.md", "report.html", "sweep.png", "sweep.svg") if (store.path / n).exists()]
    return Rendered(text, files, warnings)


def rerender(run_dir: str | Path) -> str:
    """Re-render the reports from a run directory's stored files alone; returns report.md."""
    return rerender_run(run_dir).text
