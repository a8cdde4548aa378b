"""Feature mediation, rescue and structured closure (DESIGN 1.6), as programs for the executor.

All passes are ``L_IT`` late-only passes at the run's headline boundary ``b``, so they run
under every residency and engine:

- *activations*: each model's natural late stack on its own boundary state, recording the
  outputs of the crosscoder's MLP layers at every position;
- *mediation*: on held-out events, the IT-branch decoder contribution of a latent set ``S`` (the
  latents computed, from the IT branch alone, on the clean pass) is subtracted from those MLP
  outputs in both ``L_IT`` cells; the interaction drop and its share, for ``S`` = the top-k
  ranked latents, matched-random latents (same firing-frequency bins) and the most active
  latents outside the top-k. Latents are ranked on the train split by their direct effect on
  the interaction (change of activation between ``(U_IT,L_IT)`` and ``(U_PT,L_IT)`` times the
  decoder direction read through the IT head on ``t_IT - t_PT``);
- *rescue*: the top-k latents' activations of ``(U_IT,L_IT)`` patched into ``(U_PT,L_IT)``;
- *closure*: PCA of train-split boundary shifts ``U_IT - U_PT`` (last position); held-out
  shifts projected on the top-r components are added to ``U_PT`` through ``L_IT``, against
  Gaussian, random-subspace and sign-flipped controls.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.analysis import EventSet, GatheredAnalysis
from ...core.cells import event_y
from ...core.stats import BootstrapConfig, block_bootstrap, cluster_mean_ci
from ...execution import Edit, Executor, Late, Program
from .crosscoder import Crosscoder

KS = (10, 50, 200, 500)


def split_events(events, fraction: float = 0.5):
    """A stable train/held-out split by prompt (hash of the prompt id): :meth:`EventSet.split` on
    bare events (the crosscoder trains on the train part before the study runs)."""
    train, held = EventSet(list(events), "", "").split(fraction)
    return train.events, held.events


def _recorder(store: dict, item_lengths: list[int], key):
    def fn(h, items):
        for row, k in enumerate(items):
            store[(key, k)] = h[row, : item_lengths[k]].detach().float().cpu()
        return h
    return fn


def activations(ex: Executor, events: EventSet, boundary: int, layers: list[int]) -> Program:
    """Per event, ``(x_pt, x_it)``: each model's MLP outputs at ``layers`` over the prefix,
    concatenated (``[n, len(layers) x d]``), from its natural late stack."""
    b, lengths = boundary, [len(s) for s in events.sequences]
    u_pt, u_it = yield from events.states([events.base, events.tuned], [b])
    store: dict = {}
    yield [Late(role, b, [s.boundary[b] for s in us], events.sequences,
                [Edit(layer, "mlp", _recorder(store, lengths, (role, layer))) for layer in layers])
           for role, us in ((events.base, u_pt), (events.tuned, u_it))]
    out = []
    for k in range(len(events.events)):
        out.append(tuple(torch.cat([store[((role, layer), k)] for layer in layers], dim=-1)
                         for role in (events.base, events.tuned)))
    return out


def _y(ex, role, finals, events):
    """Y of each event's final state read out with ``role``'s head (numpy)."""
    return event_y(ex.readout(role, torch.stack(list(finals))), events).numpy()


def _edits(cc: Crosscoder, layers, deltas: list[torch.Tensor], sign: float):
    """Edits adding ``sign x delta`` (per item ``[n, d_in]``, denormalised) to the MLP outputs."""
    d = cc.config.hidden_size

    def make(j):
        def fn(h, items):
            out = h.clone()
            for row, k in enumerate(items):
                n = deltas[k].shape[0]
                out[row, :n] += sign * deltas[k][:, j * d:(j + 1) * d].to(h.device, h.dtype)
            return out
        return fn
    return [Edit(layer, "mlp", make(j)) for j, layer in enumerate(layers)]


def _rows(parts: list, key: Any) -> Any:
    """The per-event rows of ``key`` across chunk parts, in event order."""
    rows = [p[key] for p in parts if key in p and len(p[key])]
    if not rows:
        return parts[0][key] if parts and key in parts[0] else []
    return torch.cat(rows) if isinstance(rows[0], torch.Tensor) else np.concatenate(rows) \
        if isinstance(rows[0], np.ndarray) else [x for r in rows for x in r]


@dataclass
class FeatureStudy(GatheredAnalysis):
    """Mediation and rescue by the crosscoder's latents, split by prompt
    (:meth:`EventSet.split`): latents are ranked on the train part (``gather``: each train event's
    direct-effect scores and firing, each held-out event's latent activity; ``decide``: the ranking
    and the latent sets), the study is measured on the held-out part (``measure``: per-event
    interactions with each set removed or rescued; ``combine``: the result dict,
    ``features/mediate.json``). Any chunking gives the same result."""

    crosscoder: Crosscoder
    boundary: int
    ks: tuple[int, ...] = KS
    seed: int = 0
    name: str = "feature_study"

    def _z_it(self, x):  # IT-branch latents of raw IT MLP outputs [n, d_in]
        cc = self.crosscoder
        with torch.no_grad():
            return cc.encode(None, cc.normalize(x, "it"))

    def _clean(self, part: EventSet, tags=("pt", "it")) -> Program:
        """Both L_IT cells of ``part`` (or the tagged ones), recording the crosscoder's MLP layers:
        ``(u_pt, u_it, finals by tag, {tag: per-event latents})``."""
        b, layers = self.boundary, self.crosscoder.config.layers
        lengths = [len(s) for s in part.sequences]
        u_pt, u_it = yield from part.states([part.base, part.tuned], [b])
        store: dict = {}
        ups = {"pt": u_pt, "it": u_it}
        finals = yield [Late(part.tuned, b, [s.boundary[b] for s in ups[tag]], part.sequences,
                             [Edit(layer, "mlp", _recorder(store, lengths, (tag, layer))) for layer in layers])
                        for tag in tags]
        z = {tag: [self._z_it(torch.cat([store[((tag, la), k)] for la in layers], -1)) for k in range(len(part.events))]
             for tag in tags}
        return u_pt, u_it, dict(zip(tags, finals)), z

    def gather(self, ex: Executor, events: EventSet) -> Program:
        train, held = events.split()
        cc, n_lat = self.crosscoder, self.crosscoder.config.n_latents
        part = {"scores": torch.zeros(0, n_lat), "fired": torch.zeros(0, n_lat), "activity": torch.zeros(0, n_lat)}
        if train.events:
            _, _, _, z = yield from self._clean(train)
            head = ex.models.head(train.tuned).anatomy
            w_u = head.lm_head.weight.detach().float().cpu()
            gamma = getattr(head.final_norm, "weight", None)
            gamma = gamma.detach().float().cpu() if gamma is not None else torch.ones(cc.config.hidden_size)
            d, layers = cc.config.hidden_size, cc.config.layers
            with torch.no_grad():
                resid_dirs = sum(cc.W_dec[1][:, j * d:(j + 1) * d] for j in range(len(layers))) \
                    * cc.config.norm_scale.get("it", 1.0)
                directions = torch.stack([(w_u[e.t_it] - w_u[e.t_pt]) * gamma for e in train.events]) @ resid_dirs.T
                part["scores"] = torch.stack([(z["it"][k][-1] - z["pt"][k][-1]) for k in range(len(train.events))]) \
                    * directions
                part["fired"] = torch.stack([(zz > 0).float().mean(0) for zz in z["it"]])
        if held.events:
            _, _, _, z = yield from self._clean(held, tags=("it",))
            part["activity"] = torch.stack([zz.mean(0) for zz in z["it"]])
        return part

    def decide(self, parts: list) -> dict:
        scores, fired, activity = (_rows(parts, key) for key in ("scores", "fired", "activity"))
        n_train, n_lat = len(scores), self.crosscoder.config.n_latents
        rng = np.random.default_rng(self.seed)
        mean_score = scores.mean(0) if n_train else torch.zeros(n_lat)
        ranked = torch.argsort(mean_score, descending=True).tolist()
        freq = (fired.mean(0) if n_train else torch.zeros(n_lat)).numpy()
        bins = np.digitize(freq, np.quantile(freq, [0.25, 0.5, 0.75])) if n_train else np.zeros(n_lat, dtype=int)
        active_order = torch.argsort(activity.mean(0), descending=True).tolist() if len(activity) else list(range(n_lat))
        ks = [k for k in self.ks if k <= n_lat] or [n_lat]
        sets = {}
        for k in ks:
            top = ranked[:k]
            matched = []
            for bin_id in np.unique(bins[top]):
                need = int(np.sum(bins[top] == bin_id))
                pool = [i for i in np.flatnonzero(bins == bin_id) if i not in top]
                matched += list(rng.choice(pool, size=min(need, len(pool)), replace=False)) if pool else []
            active = [i for i in active_order if i not in top][:k]
            sets[k] = {"top": top, "matched_random": [int(i) for i in matched], "top_active": active}
        rescue = {k: {"top": sets[k]["top"], "random": [int(i) for i in rng.choice(n_lat, size=k, replace=False)]}
                  for k in ks}
        return {"n_train": n_train, "ranked": ranked, "sets": sets, "rescue": rescue}

    def measure(self, ex: Executor, events: EventSet, plan: dict) -> Program:
        held = events.split()[1]
        if not held.events:
            return {"prompt_ids": []}
        cc, b, layers, tuned, evs = self.crosscoder, self.boundary, self.crosscoder.config.layers, held.tuned, held.events
        u_pt, u_it, clean, z = yield from self._clean(held)
        y_upt_lit, y_uit_lit = _y(ex, tuned, clean["pt"], evs), _y(ex, tuned, clean["it"], evs)
        y_upt_lpt = _y(ex, tuned, [s.final for s in u_pt], evs)
        (late_pt,) = yield [Late(held.base, b, [s.boundary[b] for s in u_it], held.sequences)]
        y_uit_lpt = _y(ex, tuned, late_pt, evs)

        def ablate(latents):
            deltas = {tag: [cc.denormalize_delta(cc.decoder_contribution(zz, "it", latents), "it") for zz in z[tag]]
                      for tag in ("pt", "it")}
            return [Late(tuned, b, [s.boundary[b] for s in us], held.sequences, _edits(cc, layers, deltas[tag], -1.0))
                    for tag, us in (("pt", u_pt), ("it", u_it))]

        keys = [(k, name) for k, group in plan["sets"].items() for name in group]
        results = yield [r for k, name in keys for r in ablate(plan["sets"][k][name])]
        part: dict[Any, Any] = {"prompt_ids": [e.prompt_id for e in evs], "y_upt_lit": y_upt_lit,
                                "y_uit_lit": y_uit_lit, "interaction": (y_uit_lit - y_uit_lpt) - (y_upt_lit - y_upt_lpt)}
        for n, key in enumerate(keys):
            ya_pt, ya_it = _y(ex, tuned, results[2 * n], evs), _y(ex, tuned, results[2 * n + 1], evs)
            part[("ablated", *key)] = (ya_it - y_uit_lpt) - (ya_pt - y_upt_lpt)
            part[("drop_uit", *key)], part[("drop_upt", *key)] = y_uit_lit - ya_it, y_upt_lit - ya_pt
        rescue_keys = [(k, name) for k, group in plan["rescue"].items() for name in group]
        requests = []
        for k, name in rescue_keys:  # the latents of (U_IT, L_IT) patched into (U_PT, L_IT)
            deltas = []
            for zi, zp in zip(z["it"], z["pt"]):
                n = min(zi.shape[0], zp.shape[0])
                diff = torch.zeros_like(zp)
                diff[:n] = zi[:n] - zp[:n]
                deltas.append(cc.denormalize_delta(cc.decoder_contribution(diff, "it", plan["rescue"][k][name]), "it"))
            requests.append(Late(tuned, b, [s.boundary[b] for s in u_pt], held.sequences, _edits(cc, layers, deltas, 1.0)))
        rescued = yield requests
        for n, key in enumerate(rescue_keys):
            part[("rescued", *key)] = _y(ex, tuned, rescued[n], evs) - y_upt_lit
        return part

    def combine(self, plan: dict, parts: list) -> dict:
        ids = _rows(parts, "prompt_ids")
        if not ids:
            return {"n_train": plan["n_train"], "n_heldout": 0}
        inter = _rows(parts, "interaction")
        curve = {}
        for k, group in plan["sets"].items():
            for name in group:
                inter_a = _rows(parts, ("ablated", k, name))
                drop, base_i = float(np.mean(inter - inter_a)), float(np.mean(inter))
                spread = cluster_mean_ci(np.asarray(inter - inter_a, dtype=float), ids,
                                         block_bootstrap(BootstrapConfig(), f"features/{k}/{name}"))
                d_uit, d_upt = (float(np.mean(_rows(parts, (which, k, name)))) for which in ("drop_uit", "drop_upt"))
                curve.setdefault(str(k), {})[name] = {
                    "interaction_drop": drop, "interaction_drop_ci": spread["ci"], "n": spread["n"],
                    "share": drop / base_i if abs(base_i) >= 0.1 else None,
                    "drop_uit_lit": d_uit, "drop_upt_lit": d_upt, "upstream_dependence": d_uit - d_upt}
        missing = float(np.mean(_rows(parts, "y_uit_lit") - _rows(parts, "y_upt_lit")))
        rescue = {}
        for k, group in plan["rescue"].items():
            for name in group:
                gain = float(np.mean(_rows(parts, ("rescued", k, name))))
                rescue.setdefault(str(k), {})[name] = {
                    "logit_gain": gain, "fraction_of_missing": gain / missing if abs(missing) >= 0.1 else None}
        return {"n_train": plan["n_train"], "n_heldout": len(ids), "interaction": float(np.mean(inter)),
                "missing_margin": missing, "mediation": curve, "rescue": rescue, "top_latents": plan["ranked"][:20]}


@dataclass
class Closure(GatheredAnalysis):
    """Structured boundary-state closure through ``L_IT`` (no crosscoder needed): principal
    directions of the train part's boundary shifts (:meth:`EventSet.split`; ``gather``: each
    train event's last-position shift; ``decide``: the directions and the random subspaces),
    measured on the held-out part (``measure``: per-event gains; ``combine``: the result). The
    Gaussian control's noise is drawn per held-out event from a seed of its prompt, so any
    chunking gives the same result."""

    boundary: int
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    seed: int = 0
    name: str = "closure"

    def gather(self, ex: Executor, events: EventSet) -> Program:
        train, b = events.split()[0], self.boundary
        if not train.events:
            return {"shifts": torch.zeros(0)}
        t_pt, t_it = yield from train.states([train.base, train.tuned], [b])
        return {"shifts": torch.stack([(y.boundary[b][-1] - x.boundary[b][-1]).float().cpu()
                                       for x, y in zip(t_pt, t_it)])}

    def decide(self, parts: list) -> dict:
        shifts = _rows(parts, "shifts")
        if len(shifts) == 0:
            return {"n_train": 0}
        _, _, vh = torch.linalg.svd(shifts - shifts.mean(0), full_matrices=True)  # rows: principal directions
        d = vh.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        ranks = sorted({min(r, d) for r in self.ranks} | {d})
        return {"n_train": len(shifts), "directions": vh, "ranks": ranks,
                "random_bases": {r: torch.linalg.qr(torch.randn(d, r, generator=gen))[0] for r in ranks}}

    def measure(self, ex: Executor, events: EventSet, plan: dict) -> Program:
        held, b = events.split()[1], self.boundary
        if not held.events or not plan["n_train"]:
            return {"prompt_ids": [], "unmeasured": len(held.events)}
        tuned = held.tuned
        u_pt, u_it = yield from held.states([held.base, tuned], [b])
        deltas = [(y.boundary[b] - x.boundary[b]).float().cpu() for x, y in zip(u_pt, u_it)]
        noise = {r: [torch.randn(dl.shape, generator=torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}/{e.prompt_id}/{e.position}/{r}".encode()))) for dl, e in zip(deltas, held.events)]
            for r in plan["ranks"]}

        def patched(fn):
            return [(x.boundary[b].float().cpu() + fn(delta, k)).to(x.boundary[b].dtype)
                    for k, (x, delta) in enumerate(zip(u_pt, deltas))]

        def variants(r):
            basis, rand_basis = plan["directions"][:r].T, plan["random_bases"][r]  # [d, r]

            def gaussian(dl, k):
                proj = dl @ basis @ basis.T
                g = noise[r][k]
                return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12) * proj.norm(dim=-1, keepdim=True)
            return {"pca": lambda dl, k: dl @ basis @ basis.T, "sign_flipped": lambda dl, k: -(dl @ basis @ basis.T),
                    "random_subspace": lambda dl, k: dl @ rand_basis @ rand_basis.T, "gaussian": gaussian}

        keys = [(r, name, fn) for r in plan["ranks"] for name, fn in variants(r).items()]
        results = yield [Late(tuned, b, patched(fn), held.sequences) for _, _, fn in keys] + \
            [Late(tuned, b, [x.boundary[b] for x in u_pt], held.sequences)]
        evs = held.events
        y0 = _y(ex, tuned, results[-1], evs)
        part: dict[Any, Any] = {"prompt_ids": [e.prompt_id for e in evs], "y_upt_lit": y0,
                                "y_uit_lit": _y(ex, tuned, [y.final for y in u_it], evs)}
        for n, (r, name, _) in enumerate(keys):
            part[(r, name)] = _y(ex, tuned, results[n], evs) - y0
        return part

    def combine(self, plan: dict, parts: list) -> dict:
        ids = _rows(parts, "prompt_ids")
        if not ids:
            return {"n_train": plan["n_train"], "n_heldout": sum(p.get("unmeasured", 0) for p in parts)}
        y0, y1 = _rows(parts, "y_upt_lit"), _rows(parts, "y_uit_lit")
        missing = float(np.mean(y1 - y0))
        out = {}
        for r in plan["ranks"]:
            for name in ("pca", "sign_flipped", "random_subspace", "gaussian"):
                gain = float(np.mean(_rows(parts, (r, name))))
                out.setdefault(str(r), {})[name] = {"gain": gain,
                                                    "closure": gain / missing if abs(missing) >= 0.1 else None}
        return {"n_train": plan["n_train"], "n_heldout": len(ids), "hidden_size": plan["directions"].shape[1],
                "missing_margin": missing, "y_upt_lit": float(np.mean(y0)), "y_uit_lit": float(np.mean(y1)),
                "by_rank": out}
