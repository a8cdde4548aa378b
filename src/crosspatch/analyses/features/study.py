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

from dataclasses import dataclass

import numpy as np
import torch

from ...core.analysis import Analysis, EventSet
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


@dataclass
class FeatureStudy(Analysis):
    """Mediation and rescue by the crosscoder's latents: an ordinary analysis whose program splits
    its events by prompt (:meth:`EventSet.split`): latents are ranked on the train part, the
    study is measured on the held-out part. Returns one result dict (``features/mediate.json``)."""

    crosscoder: Crosscoder
    boundary: int
    ks: tuple[int, ...] = KS
    seed: int = 0
    name: str = "feature_study"

    def program(self, ex: Executor, events: EventSet) -> Program:
        train, held = events.split()
        cc, b, layers = self.crosscoder, self.boundary, self.crosscoder.config.layers
        tuned, base = held.tuned, held.base
        rng = np.random.default_rng(self.seed)

        def z_it(x):  # IT-branch latents of raw IT MLP outputs [n, d_in]
            with torch.no_grad():
                return cc.encode(None, cc.normalize(x, "it"))

        # ranking on the train split: direct effect of each latent on the interaction
        head = ex.models.head(tuned).anatomy
        scores = torch.zeros(cc.config.n_latents)
        freq = torch.zeros(cc.config.n_latents)
        if train.events:
            lengths = [len(s) for s in train.sequences]
            u_pt, u_it = yield from train.states([base, tuned], [b])
            store: dict = {}
            yield [Late(tuned, b, [s.boundary[b] for s in us], train.sequences,
                        [Edit(layer, "mlp", _recorder(store, lengths, (tag, layer))) for layer in layers])
                   for tag, us in (("pt", u_pt), ("it", u_it))]
            w_u = head.lm_head.weight.detach().float().cpu()
            gamma = getattr(head.final_norm, "weight", None)
            gamma = gamma.detach().float().cpu() if gamma is not None else torch.ones(cc.config.hidden_size)
            d = cc.config.hidden_size
            with torch.no_grad():
                resid_dirs = sum(cc.W_dec[1][:, j * d:(j + 1) * d] for j in range(len(layers))) * cc.config.norm_scale.get("it", 1.0)
                for k, e in enumerate(train.events):
                    za = z_it(torch.cat([store[(("it", la), k)] for la in layers], -1))
                    zb = z_it(torch.cat([store[(("pt", la), k)] for la in layers], -1))
                    u = (w_u[e.t_it] - w_u[e.t_pt]) * gamma
                    scores += (za[-1] - zb[-1]) * (resid_dirs @ u)
                    freq += (za > 0).float().mean(0)
            scores /= len(train.events)
            freq /= len(train.events)
        ranked = torch.argsort(scores, descending=True).tolist()

        # held-out: clean passes of both L_IT cells (recording MLP outputs) and both L_PT cells
        if not held.events:
            return {"n_train": len(train.events), "n_heldout": 0}
        lengths = [len(s) for s in held.sequences]
        u_pt, u_it = yield from held.states([base, tuned], [b])
        store = {}
        clean = yield [Late(tuned, b, [s.boundary[b] for s in us], held.sequences,
                            [Edit(layer, "mlp", _recorder(store, lengths, (tag, layer))) for layer in layers])
                       for tag, us in (("pt", u_pt), ("it", u_it))]
        evs = held.events
        y_upt_lit, y_uit_lit = _y(ex, tuned, clean[0], evs), _y(ex, tuned, clean[1], evs)
        y_upt_lpt, y_uit_lpt = _y(ex, tuned, [s.final for s in u_pt], evs), None
        (late_pt,) = yield [Late(base, b, [s.boundary[b] for s in u_it], held.sequences)]
        y_uit_lpt = _y(ex, tuned, late_pt, evs)
        inter = (y_uit_lit - y_uit_lpt) - (y_upt_lit - y_upt_lpt)
        z = {tag: [z_it(torch.cat([store[((tag, la), k)] for la in layers], -1)) for k in range(len(evs))]
             for tag in ("pt", "it")}

        def ablate(latents):
            deltas = {tag: [cc.denormalize_delta(cc.decoder_contribution(zz, "it", latents), "it") for zz in z[tag]]
                      for tag in ("pt", "it")}
            return [Late(tuned, b, [s.boundary[b] for s in us], held.sequences, _edits(cc, layers, deltas[tag], -1.0))
                    for tag, us in (("pt", u_pt), ("it", u_it))]

        n_lat = cc.config.n_latents
        ks = [k for k in self.ks if k <= n_lat] or [n_lat]
        bins = np.digitize(freq.numpy(), np.quantile(freq.numpy(), [0.25, 0.5, 0.75])) if len(train.events) else \
            np.zeros(n_lat, dtype=int)
        active_order = torch.argsort(torch.stack([zz.mean(0) for zz in z["it"]]).mean(0), descending=True).tolist()
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
        requests, keys = [], []
        for k, group in sets.items():
            for name, latents in group.items():
                requests += ablate(latents)
                keys.append((k, name))
        results = yield requests
        curve = {}
        for n, (k, name) in enumerate(keys):
            ya_pt, ya_it = _y(ex, tuned, results[2 * n], evs), _y(ex, tuned, results[2 * n + 1], evs)
            inter_a = (ya_it - y_uit_lpt) - (ya_pt - y_upt_lpt)
            drop = float(np.mean(inter - inter_a))
            base_i = float(np.mean(inter))
            spread = cluster_mean_ci(np.asarray(inter - inter_a, dtype=float), [e.prompt_id for e in evs],
                                     block_bootstrap(BootstrapConfig(), f"features/{k}/{name}"))
            curve.setdefault(str(k), {})[name] = {
                "interaction_drop": drop, "interaction_drop_ci": spread["ci"], "n": spread["n"],
                "share": drop / base_i if abs(base_i) >= 0.1 else None,
                "drop_uit_lit": float(np.mean(y_uit_lit - ya_it)), "drop_upt_lit": float(np.mean(y_upt_lit - ya_pt)),
                "upstream_dependence": float(np.mean(y_uit_lit - ya_it) - np.mean(y_upt_lit - ya_pt))}

        # rescue: the top-k latents of (U_IT, L_IT) patched into (U_PT, L_IT)
        rescue_requests, rescue_keys = [], []
        for k in ks:
            for name, latents in (("top", sets[k]["top"]), ("random", [int(i) for i in rng.choice(n_lat, size=k, replace=False)])):
                deltas = []
                for zi, zp in zip(z["it"], z["pt"]):
                    n = min(zi.shape[0], zp.shape[0])
                    diff = torch.zeros_like(zp)
                    diff[:n] = zi[:n] - zp[:n]
                    deltas.append(cc.denormalize_delta(cc.decoder_contribution(diff, "it", latents), "it"))
                rescue_requests.append(Late(tuned, b, [s.boundary[b] for s in u_pt], held.sequences,
                                            _edits(cc, layers, deltas, 1.0)))
                rescue_keys.append((k, name))
        rescued = yield rescue_requests
        missing = float(np.mean(y_uit_lit - y_upt_lit))
        rescue = {}
        for n, (k, name) in enumerate(rescue_keys):
            gain = float(np.mean(_y(ex, tuned, rescued[n], evs) - y_upt_lit))
            rescue.setdefault(str(k), {})[name] = {"logit_gain": gain,
                                                   "fraction_of_missing": gain / missing if abs(missing) >= 0.1 else None}
        return {"n_train": len(train.events), "n_heldout": len(evs), "interaction": float(np.mean(inter)),
                "missing_margin": missing, "mediation": curve, "rescue": rescue,
                "top_latents": ranked[:20]}


@dataclass
class Closure(Analysis):
    """Structured boundary-state closure through ``L_IT`` (no crosscoder needed): principal
    directions of the train part's boundary shifts (:meth:`EventSet.split`), measured on the
    held-out part."""

    boundary: int
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    seed: int = 0
    name: str = "closure"

    def program(self, ex: Executor, events: EventSet) -> Program:
        train, held = events.split()
        b, tuned, base = self.boundary, held.tuned, held.base
        if not train.events or not held.events:
            return {"n_train": len(train.events), "n_heldout": len(held.events)}
        t_pt, t_it = yield from train.states([base, tuned], [b])
        shifts = torch.stack([(y.boundary[b][-1] - x.boundary[b][-1]).float().cpu() for x, y in zip(t_pt, t_it)])
        centered = shifts - shifts.mean(0)
        _, _, vh = torch.linalg.svd(centered, full_matrices=True)  # rows: principal directions
        d = vh.shape[1]
        u_pt, u_it = yield from held.states([base, tuned], [b])
        deltas = [(y.boundary[b] - x.boundary[b]).float().cpu() for x, y in zip(u_pt, u_it)]
        gen = torch.Generator().manual_seed(self.seed)
        ranks = sorted({min(r, d) for r in self.ranks} | {d})
        requests, keys = [], []

        def patched(fn):
            return [(x.boundary[b].float().cpu() + fn(delta)).to(x.boundary[b].dtype) for x, delta in zip(u_pt, deltas)]

        for r in ranks:
            basis = vh[:r].T  # [d, r]
            rand_basis = torch.linalg.qr(torch.randn(d, r, generator=gen))[0]
            gauss = [torch.randn(dl.shape, generator=gen) for dl in deltas]
            variants = {  # bases bound now: each closure keeps this rank's
                "pca": lambda dl, basis=basis: dl @ basis @ basis.T,
                "sign_flipped": lambda dl, basis=basis: -(dl @ basis @ basis.T),
                "random_subspace": lambda dl, rand_basis=rand_basis: dl @ rand_basis @ rand_basis.T,
            }
            for name, fn in variants.items():
                requests.append(Late(tuned, b, patched(fn), held.sequences))
                keys.append((r, name))
            g_iter = iter(gauss)

            def gaussian(dl, g_iter=g_iter, basis=basis):
                g = next(g_iter)
                proj = dl @ basis @ basis.T
                return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12) * proj.norm(dim=-1, keepdim=True)
            requests.append(Late(tuned, b, patched(gaussian), held.sequences))
            keys.append((r, "gaussian"))
        requests.append(Late(tuned, b, [x.boundary[b] for x in u_pt], held.sequences))
        results = yield requests
        evs = held.events
        y0 = _y(ex, tuned, results[-1], evs)
        y1 = _y(ex, tuned, [y.final for y in u_it], evs)
        missing = float(np.mean(y1 - y0))
        out = {}
        for n, (r, name) in enumerate(keys):
            gain = float(np.mean(_y(ex, tuned, results[n], evs) - y0))
            out.setdefault(str(r), {})[name] = {"gain": gain, "closure": gain / missing if abs(missing) >= 0.1 else None}
        return {"n_train": len(train.events), "n_heldout": len(evs), "hidden_size": d, "missing_margin": missing,
                "y_upt_lit": float(np.mean(y0)), "y_uit_lit": float(np.mean(y1)), "by_rank": out}
