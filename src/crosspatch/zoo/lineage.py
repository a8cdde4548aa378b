"""The zoo's lineage, the recipe of the weather-report model it miniaturises (``lineage-sft`` ->
``lineage-rft`` -> ``lineage-dpo``): each stage's recipe and step counts, its training (TRL's SFT
trainer, then rejection-sampling fine-tuning on validated samples, then TRL's DPO trainer), and
the metrics each stage's card reports (preference margin, validator pass rate)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from . import data as wx
from .build import (
    ADAM_BETAS,
    MAX_GRAD_NORM,
    WEIGHT_DECAY,
    ZooSpec,
    _lm_loss,
    _save_model,
    instruction_batch,
    new_model,
    warmup_steps,
)

LINEAGE = ("lineage-sft", "lineage-rft", "lineage-dpo")  # in training order; the last is the final model


def lineage_steps(spec: ZooSpec) -> dict:
    return {"sft": spec.lineage_sft_steps, "dpo": spec.dpo_steps, "dpo_lr": spec.dpo_lr, "rft": spec.rft_steps,
            "rft_prompts": spec.rft_prompts, "rft_samples": spec.rft_samples}


def lineage_recipes(spec: ZooSpec) -> dict[str, tuple[str, str]]:
    k = lineage_steps(spec)
    return {
        "lineage-sft": (f"Lineage stage 1, supervised fine-tuning of `base` (TRL's SFTTrainer, loss on the report) on the "
                        f"instruction pairs, {k['sft']} steps.",
                        "instruction_loss_in_distribution"),
        "lineage-rft": (f"Lineage stage 2, a verifiable-reward stage: rejection-sampling fine-tuning of `lineage-sft` "
                        f"on its own continuations (greedy + {k['rft_samples'] - 1} sampled per prompt, "
                        f"{k['rft_prompts']} training prompts) that pass the reports' validators, TRL's SFTTrainer, "
                        f"{k['rft']} steps.", "validator_pass_rate"),
        "lineage-dpo": (f"Lineage stage 3 (the final model), DPO (TRL's DPOTrainer, beta 0.1, reference = `lineage-rft`) "
                        f"on preference pairs: the correct report against a subtly wrong one (a value off by a few "
                        f"units, or the conditional statement dropped), {k['dpo']} steps.", "preference_margin"),
    }


@torch.no_grad()
def preference_margin(model, pairs: list[dict], tok) -> float:
    """Mean log-probability of the chosen report minus the rejected one (higher: prefers correct)."""
    model.eval()
    diffs = []
    for p in pairs:
        logp = []
        for key in ("chosen", "rejected"):
            ids, mask, lab = instruction_batch([{"prompt": p["prompt"], "response": p[key]}], tok)
            n = int((lab[:, 1:] != -100).sum())
            logp.append(-float(_lm_loss(model, ids, mask, lab)) * n)
        diffs.append(logp[0] - logp[1])
    return sum(diffs) / len(diffs)


@torch.no_grad()
def sample_reports(model, prompts: list[str], tok, samples: int, seed: int, max_new_tokens: int = 48,
                   batch_size: int = 64) -> list[list[str]]:
    """Greedy plus ``samples - 1`` temperature-1 continuations of each prompt (batched, left-padded)."""
    import copy

    torch.manual_seed(seed)
    model.eval()
    left = copy.copy(tok)
    left.padding_side = "left"
    opts = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = left(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        width = enc["input_ids"].shape[1]
        greedy = model.generate(**enc, do_sample=False, **opts)
        rows = [[g] for g in greedy]
        if samples > 1:
            sampled = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0,
                                     num_return_sequences=samples - 1, **opts)
            for k, g in enumerate(sampled):
                rows[k // (samples - 1)].append(g)
        out += [[tok.decode(g[width:], skip_special_tokens=True) for g in row] for row in rows]
    return out


def pass_rate(model, pairs: list[dict], tok, seed: int) -> float:
    """Share of greedy reports that pass their reference report's validator."""
    from ..inputs.validators import parse_validator

    texts = sample_reports(model, [p["prompt"] for p in pairs], tok, 1, seed)
    ok = [parse_validator(wx.validator_for_report(p["response"]), "zoo").check(t[0]) for p, t in zip(pairs, texts)]
    return sum(ok) / len(ok)


def train_lineage(base, corpora: dict, tok, spec: ZooSpec, log=print) -> tuple[dict, int]:
    """The three stages of the lineage (each a full model, trained from the previous one), and
    how many sampled reports the rejection-sampling stage kept."""
    import copy

    from ..inputs.validators import parse_validator

    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # pyright: ignore[reportPrivateImportUsage] - trl's lazy exports
    except ImportError as exc:  # the zoo build's own extra
        from ..errors import CrosspatchError

        raise CrosspatchError("building the zoo's lineage needs TRL: pip install -e '.[zoo]'") from exc
    k = lineage_steps(spec)

    def snapshot(model):  # an independent copy of the weights (no shared storage with the trainer's model)
        return {name: t.detach().clone() for name, t in model.state_dict().items()}

    def sft(model, pairs, steps, lr, seed):
        """TRL's SFTTrainer on prompt -> completion rows, loss on the completion (and its EOS), with
        the AdamW settings and warmup of :func:`train` and TRL's cosine decay."""
        cfg = SFTConfig(output_dir=str(Path(tempfile.mkdtemp()) / "sft"), per_device_train_batch_size=spec.batch_size,
                        max_steps=steps, learning_rate=lr, weight_decay=WEIGHT_DECAY, adam_beta1=ADAM_BETAS[0],
                        adam_beta2=ADAM_BETAS[1], warmup_steps=warmup_steps(steps), lr_scheduler_type="cosine",
                        max_grad_norm=MAX_GRAD_NORM, completion_only_loss=True, packing=False,
                        report_to=[], logging_steps=max(steps // 4, 1), save_strategy="no", seed=seed, use_cpu=True,
                        disable_tqdm=True)
        rows = Dataset.from_list([{"prompt": p["prompt"], "completion": p["response"]} for p in pairs])
        trainer = SFTTrainer(model=model, args=cfg, processing_class=tok, train_dataset=rows)
        trainer.train()
        return trainer.model.eval()  # pyright: ignore[reportOptionalMemberAccess] - set after train()

    model = sft(base, corpora["instructions"], k["sft"], spec.it_lr, spec.seed + 50)
    stages = {"lineage-sft": snapshot(model)}
    log(f"lineage-rft: rejection sampling on {k['rft_prompts']} prompts, then {k['rft']} steps")
    pool = corpora["instructions"][: k["rft_prompts"]]
    samples = sample_reports(model, [p["prompt"] for p in pool], tok, k["rft_samples"], spec.seed + 70)
    kept = []
    for p, texts in zip(pool, samples):
        check = parse_validator(wx.validator_for_report(p["response"]), "zoo")
        kept += [{"prompt": p["prompt"], "response": t.rstrip("\n") + "\n"} for t in dict.fromkeys(texts)
                 if check.check(t)]
    log(f"  kept {len(kept)} of {len(pool) * k['rft_samples']} samples")
    if kept:  # (an undertrained smoke build may keep none: then this stage equals the SFT stage)
        model = sft(model, kept, k["rft"], spec.it_lr / 2, spec.seed + 70)
    stages["lineage-rft"] = snapshot(model)
    log(f"lineage-dpo: DPO {k['dpo']} steps")
    reference = copy.deepcopy(model).eval()
    cfg = DPOConfig(output_dir=str(Path(tempfile.mkdtemp()) / "dpo"), per_device_train_batch_size=spec.batch_size,
                    max_steps=k["dpo"], learning_rate=k["dpo_lr"], beta=0.1, report_to=[], logging_steps=20,
                    save_strategy="no", seed=spec.seed + 60, use_cpu=True, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=reference, args=cfg, processing_class=tok,  # pyright: ignore[reportArgumentType]
                         train_dataset=Dataset.from_list(corpora["preferences"]))
    trainer.train()
    model = trainer.model.eval()  # pyright: ignore[reportOptionalMemberAccess] - set after train()
    stages["lineage-dpo"] = snapshot(model)
    out = {}
    for name, state in stages.items():
        fresh = new_model(spec, tok)
        fresh.load_state_dict(state)
        out[name] = fresh.eval()
    return out, len(kept)


def build_lineage(out: Path, spec: ZooSpec, corpora: dict, tok, fresh_base, evaluate, evals: dict, log=print) -> None:
    """Train, evaluate (``evaluate(name, model)`` fills ``evals[name]``) and save the lineage's stages."""
    evals["base"].update(stage_metrics(fresh_base(), corpora, tok, spec))
    stages, kept = train_lineage(fresh_base(), corpora, tok, spec, log)
    for name, model in stages.items():
        evaluate(name, model)
        evals[name].update(stage_metrics(model, corpora, tok, spec))
        _save_model(model, out / name, spec, tok)
    evals["lineage-rft"]["rft_samples_kept"] = kept


def stage_metrics(model, corpora: dict, tok, spec: ZooSpec) -> dict:
    """What the lineage's later stages optimise: the preference margin on held-out pairs and the
    share of greedy reports that pass their validator (the held-out instruction prompts)."""
    return {"preference_margin": round(preference_margin(model, corpora["eval_preferences"], tok), 3),
            "validator_pass_rate": round(pass_rate(model, corpora["eval_instructions"], tok, spec.seed), 3)}
