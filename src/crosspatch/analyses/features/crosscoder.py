"""A paired PT/IT BatchTopK crosscoder on the outputs of the last few MLPs (DESIGN 1.6).

Shared latents, one encoder and one decoder per model: ``z = BatchTopK(W_pt x_pt + W_it x_it +
b)``, ``x̂_M = z W_dec_M + b_dec_M``; inputs are the concatenated outputs of the ``layers``
MLPs, normalised per model by constants estimated with a running (Welford) estimator and saved
with the weights. BatchTopK keeps the ``k x batch`` largest pre-activations of a batch, so that
*on average* each token has ``k`` active latents; at inference a threshold replaces the batch
rule (as in Bussmann et al., 2024), set so that training rows keep ``k`` latents on average. Written here rather than taken
from ``dictionary_learning`` or ``sae-lens``: neither ships a paired BatchTopK crosscoder whose
IT-branch decoder can be edited inside our late-only passes, and both would pull in their own
training stacks; ``load_crosscoder`` reads the ``dictionary_learning`` crosscoder layout.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...models.own_forward import without_autocast
from ...store import write_whole

BRANCHES = ("pt", "it")


@dataclass
class CrosscoderConfig:
    d_in: int  # len(layers) x hidden size
    n_latents: int
    k: int
    layers: list[int]
    hidden_size: int
    norm_mean: dict = field(default_factory=dict)  # branch -> list[float] (d_in)
    norm_scale: dict = field(default_factory=dict)  # branch -> float (root mean squared norm)
    threshold: float = 0.0  # inference threshold replacing the batch top-k rule
    source: str = "crosspatch"


class Crosscoder(nn.Module):
    """Shared latents over the PT and IT branches."""

    def __init__(self, config: CrosscoderConfig) -> None:
        super().__init__()
        self.config = config
        d, m = config.d_in, config.n_latents
        gen = torch.Generator().manual_seed(0)
        dec = torch.randn(2, m, d, generator=gen)
        dec = dec / dec.norm(dim=-1, keepdim=True) * 0.1
        self.W_dec = nn.Parameter(dec)  # [branch, latent, d]
        self.W_enc = nn.Parameter(dec.transpose(1, 2).clone())  # [branch, d, latent]
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(2, d))

    # -- normalisation -------------------------------------------------------------------
    def normalize(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        mean = torch.tensor(self.config.norm_mean.get(branch, [0.0] * self.config.d_in), dtype=x.dtype, device=x.device)
        return (x - mean) / self.config.norm_scale.get(branch, 1.0)

    def denormalize_delta(self, dx: torch.Tensor, branch: str) -> torch.Tensor:
        return dx * self.config.norm_scale.get(branch, 1.0)

    # -- forward -------------------------------------------------------------------------
    def pre(self, x_pt: torch.Tensor | None, x_it: torch.Tensor | None) -> torch.Tensor:
        """Pre-activations from normalised inputs (a branch may be missing: IT-only passes)."""
        out = self.b_enc
        if x_pt is not None:
            out = out + x_pt @ self.W_enc[0]
        if x_it is not None:
            out = out + x_it @ self.W_enc[1]
        return torch.relu(out)

    def encode(self, x_pt, x_it, batch_topk: bool = False) -> torch.Tensor:
        a = self.pre(x_pt, x_it)
        if batch_topk:
            flat = a.flatten()
            keep = min(flat.numel(), self.config.k * a.shape[0])
            idx = flat.topk(keep).indices
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[idx] = True
            return (flat * mask).view_as(a)
        return a * (a > self.config.threshold)

    def decode(self, z: torch.Tensor, branch: str) -> torch.Tensor:
        b = BRANCHES.index(branch)
        return z @ self.W_dec[b] + self.b_dec[b]

    def decoder_contribution(self, z: torch.Tensor, branch: str, latents=None) -> torch.Tensor:
        """``z[:, S] W_dec[S]`` in normalised units (no bias): what the latents ``S`` add."""
        b = BRANCHES.index(branch)
        if latents is None:
            return z @ self.W_dec[b]
        idx = torch.as_tensor(list(latents), dtype=torch.long)
        return z[..., idx] @ self.W_dec[b][idx]


def running_norm(batches) -> tuple[list[float], float]:
    """Mean vector and root mean squared norm of centred rows (Welford, streaming)."""
    n, mean, m2 = 0, None, 0.0
    for x in batches:
        x = x.double()
        for row in x:
            n += 1
            if mean is None:
                mean = torch.zeros_like(row)
            delta = row - mean
            mean += delta / n
            m2 += float((delta * (row - mean)).sum())
    if n == 0 or mean is None:
        raise ValueError("no activations to normalise")
    return mean.float().tolist(), math.sqrt(max(m2 / max(n - 1, 1), 1e-12))


@torch.inference_mode(False)
@torch.enable_grad()
@without_autocast()
def train_crosscoder(x_pt: torch.Tensor, x_it: torch.Tensor, layers: list[int], hidden_size: int,
                     n_latents: int = 256, k: int = 8, steps: int = 2000, batch_size: int = 256, lr: float = 3e-3,
                     seed: int = 0, log=None) -> Crosscoder:
    """Train on paired rows ``[n, d_in]`` (raw MLP outputs); normalisation estimated here. Trains
    in float32 with gradients whatever the caller entered (``torch.no_grad()``, inference mode, an
    autocast around a notebook's or a training loop's call): the same crosscoder either way."""
    # (activations made in inference mode cannot be saved for backward: such tensors are copied, no others)
    x_pt, x_it = (x.clone() if x.is_inference() else x for x in (x_pt, x_it))
    mean_pt, scale_pt = running_norm(x_pt.split(4096))
    mean_it, scale_it = running_norm(x_it.split(4096))
    config = CrosscoderConfig(x_pt.shape[1], n_latents, k, list(layers), hidden_size,
                              {"pt": mean_pt, "it": mean_it}, {"pt": scale_pt, "it": scale_it})
    model = Crosscoder(config)
    a, b = model.normalize(x_pt.float(), "pt"), model.normalize(x_it.float(), "it")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.randint(0, a.shape[0], (min(batch_size, a.shape[0]),), generator=gen)
        z = model.encode(a[idx], b[idx], batch_topk=True)
        loss = ((model.decode(z, "pt") - a[idx]) ** 2).sum(-1).mean() + ((model.decode(z, "it") - b[idx]) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # unit-norm decoder directions (summed over branches) keep the scale identifiable
            norms = model.W_dec.norm(dim=-1).sum(0).clamp_min(1e-6)
            model.W_dec.div_(norms[None, :, None] / 2)
        if log and (step % max(steps // 5, 1) == 0 or step == steps - 1):
            log(f"crosscoder step {step}: loss {loss.item():.4f}")
    with torch.no_grad():  # the inference threshold keeps k latents per training row on average
        pre = torch.cat([model.pre(a[i:i + 4096], b[i:i + 4096]).flatten() for i in range(0, a.shape[0], 4096)])
        keep = min(pre.numel(), k * a.shape[0])
        model.config.threshold = float(pre.topk(keep).values[-1]) if keep else 0.0
    return model.eval()


def quality_gate(model: Crosscoder, x_pt: torch.Tensor, x_it: torch.Tensor) -> dict:
    """Held-out quality per layer and branch: variance explained (>= 0.75), mean L0 vs k (within
    10%), and the share of latents whose firing frequency is in [0.01, 0.20] (>= 0.5)."""
    with torch.no_grad():
        a, b = model.normalize(x_pt.float(), "pt"), model.normalize(x_it.float(), "it")
        z = model.encode(a, b)
        l0 = float((z > 0).float().sum(-1).mean())
        freq = (z > 0).float().mean(0)
        in_range = float(((freq >= 0.01) & (freq <= 0.20)).float().mean())
        d = model.config.hidden_size
        per_layer = {}
        for j, layer in enumerate(model.config.layers):
            sl = slice(j * d, (j + 1) * d)
            ve = {}
            for branch, x in (("pt", a), ("it", b)):
                err = ((model.decode(z, branch) - x)[:, sl] ** 2).sum()
                total = ((x[:, sl] - x[:, sl].mean(0)) ** 2).sum().clamp_min(1e-12)
                ve[branch] = float(1 - err / total)
            per_layer[str(layer)] = ve
    ok_ve = all(v >= 0.75 for ve in per_layer.values() for v in ve.values())
    ok_l0 = abs(l0 - model.config.k) <= 0.1 * model.config.k
    ok_alive = in_range >= 0.5
    return {"variance_explained": per_layer, "mean_l0": l0, "target_k": model.config.k,
            "alive_in_range_share": in_range, "dead_share": float((freq == 0).float().mean()),
            "passed": bool(ok_ve and ok_l0 and ok_alive),
            "checks": {"variance_explained>=0.75": ok_ve, "mean_l0_within_10%": ok_l0, "alive_share>=0.5": ok_alive}}


def save_crosscoder(model: Crosscoder, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path / "crosscoder.safetensors"))
    write_whole(path / "config.json", json.dumps(asdict(model.config), indent=2) + "\n")
    return path


def load_crosscoder(path: str | Path) -> Crosscoder:
    """:func:`read_crosscoder`, with a damaged or inconsistent directory a :class:`ModelLoadError`
    naming it (a crosscoder is user input, like a checkpoint)."""
    from ...errors import CrosspatchError, ModelLoadError, first_line

    try:
        return read_crosscoder(path)
    except CrosspatchError:
        raise
    except Exception as exc:  # json, safetensors and torch raise many types for a damaged file
        first = first_line(exc, 300)
        raise ModelLoadError(f"--crosscoder {path}: not a readable crosscoder ({type(exc).__name__}: {first})") from None


def read_crosscoder(path: str | Path) -> Crosscoder:
    """A crosscoder saved by crosspatch (``config.json`` + ``crosscoder.safetensors``), or one in
    the ``dictionary_learning`` crosscoder layout (``config.json`` with ``trainer.activation_dim``
    and ``dict_size``, weights ``ae.pt`` refused / ``ae.safetensors`` with ``encoder.weight``
    ``[layers, d, m]``, ``encoder.bias``, ``decoder.weight`` ``[layers, m, d]``, ``decoder.bias``)."""
    from safetensors.torch import load_file

    from ...errors import CrosspatchError

    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise CrosspatchError(f"{path}: no config.json, not a crosscoder directory")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if (path / "crosscoder.safetensors").exists():
        model = Crosscoder(CrosscoderConfig(**cfg))
        model.load_state_dict(load_file(str(path / "crosscoder.safetensors")))
        return model.eval()
    if (path / "ae.safetensors").exists() and "trainer" in cfg:
        t = cfg["trainer"]
        w = load_file(str(path / "ae.safetensors"))
        enc, dec = w["encoder.weight"], w["decoder.weight"]  # [2, d, m], [2, m, d]
        if enc.shape[0] != 2:
            raise CrosspatchError(f"{path}: a paired crosscoder has 2 branches, this one has {enc.shape[0]}")
        config = CrosscoderConfig(d_in=int(t["activation_dim"]), n_latents=int(t["dict_size"]), k=int(t.get("k", 0)),
                                  layers=list(t.get("layers", [])), hidden_size=int(t.get("hidden_size",
                                                                                           t["activation_dim"])),
                                  threshold=float(t.get("threshold", 0.0)), source="dictionary_learning")
        model = Crosscoder(config)
        with torch.no_grad():
            model.W_enc.copy_(enc)
            model.W_dec.copy_(dec)
            model.b_enc.copy_(w["encoder.bias"])
            model.b_dec.copy_(w["decoder.bias"])
        return model.eval()
    raise CrosspatchError(f"{path}: neither crosscoder.safetensors nor a dictionary_learning ae.safetensors")
