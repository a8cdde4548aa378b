"""crosspatch where training happens: :class:`CrosspatchCallback`, a transformers
``TrainerCallback`` (so also TRL's ``SFTTrainer``/``DPOTrainer``) that runs the diagnostic while a
model trains.

    callback = CrosspatchCallback(prompts="probe.jsonl", every_n_steps=200, out="runs/train-diag")
    trainer = SFTTrainer(model=..., args=..., train_dataset=..., peft_config=lora)
    callback.attach(trainer)        # logs through trainer.log: TensorBoard, W&B, ... receive them
    trainer.train()

Every ``every_n_steps`` steps and/or at each checkpoint save, it runs first-divergence
cross-patching of the model being trained against its base on a small fixed prompt set: for a
PEFT model the base is the same weights with the adapter switched off (no second copy); for a
full fine-tune give ``base`` (a path or a module, held on the CPU between diagnostics unless you
place it). It logs ``crosspatch/E_PT``, ``crosspatch/E_IT``, ``crosspatch/interaction`` (each
with ``_ci_low``/``_ci_high``), ``crosspatch/events`` and ``crosspatch/passed``; appends a row per
step to ``history`` (and ``<out>/steps.jsonl``); writes ``crosspatch.json`` into each saved
checkpoint directory; and with ``stop_on_fail`` stops training when the verdict is not one the
policy passes. Its cost is bounded by ``max_prompts`` (that many prompts, evenly spaced through the
set, so that a file sorted by category is covered whole) and ``max_new_tokens``, and printed. With
``chat_template=True`` the prompts (rows given as chats included) are rendered by the tokenizer's
chat template, as ``crosspatch run --chat-template`` does.

In a distributed training (DDP, ``torchrun``/``accelerate launch``, DeepSpeed ZeRO-1/2) each
process holds the whole model: the main process alone runs the diagnostic, logs and writes, and
with ``stop_on_fail`` its decision is broadcast so that every process stops at the same step (the
others wait for it at each diagnostic step). A model whose weights are split across processes
(DeepSpeed ZeRO-3, FSDP) is refused when training begins: no process can run it alone; diagnose
the saved checkpoints instead (``crosspatch lineage BASE --checkpoints OUTPUT_DIR``).

Numbers equal a separate ``crosspatch run`` on the saved checkpoint with the same settings (the
test trains a zoo LoRA with TRL and checks this to 1e-4).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..core.records import verdict_readout
from ..errors import ModelLoadError, OptionError
from ..models.anatomy import is_peft_model
from ..runner.summary import HEADLINE_EFFECTS as METRICS  # the effects it logs
from ..store import json_document, json_line, write_whole
from .callback_checks import check_base, check_base_dtype, check_it_runs, refuse_sharded_training
from .training_out import STEPS_FILE, TrainingPlace, claim_out, place_of_training


class CrosspatchCallback(TrainerCallback):
    """Runs the diagnostic during training (see the module docstring)."""

    def __init__(self, prompts, base=None, boundary: int | float = 0.6, every_n_steps: int | None = None,
                 on_save: bool = True, max_prompts: int = 32, max_new_tokens: int = 32, bootstrap: int = 1000,
                 seed: int = 0, policy: dict | str | Path | None = None, stop_on_fail: bool = False, out: str | Path | None = None,
                 tokenizer=None, prefix: str = "crosspatch/", verbose: bool = True, chat_template: bool = False) -> None:
        from ..core.verdict import VerdictPolicy
        from ..inputs.chats import check_chat_rows
        from ..inputs.prompts import load_prompts
        from ..models.options import check_switches, plain_scalar
        from ..runner.checks import _int, check_bootstrap, check_boundary_spec

        items = load_prompts(prompts)  # a file's path, or prompts given in Python (as_prompts)
        max_prompts, every_n_steps, max_new_tokens, boundary, bootstrap = map(  # (numpy numbers too)
            plain_scalar, (max_prompts, every_n_steps, max_new_tokens, boundary, bootstrap))
        if isinstance(max_prompts, bool) or not isinstance(max_prompts, int) or max_prompts < 1:
            raise OptionError(f"max_prompts must be a positive integer, not {max_prompts!r}")
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise OptionError(f"every_n_steps must be a positive integer or None, not {every_n_steps!r}")
        if every_n_steps is None and not on_save:
            raise OptionError("the callback would never run: give every_n_steps, or keep on_save=True")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise OptionError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
        check_boundary_spec(boundary)
        check_bootstrap(bootstrap)
        check_base(base)
        check_switches(on_save=on_save, stop_on_fail=stop_on_fail, verbose=verbose, chat_template=chat_template)
        check_chat_rows(items, chat_template, "the training callback",
                        "pass chat_template=True to render them with the tokenizer's chat template")
        _int("seed", seed, 0)
        if out is not None and (not isinstance(out, (str, Path)) or not str(out).strip()):
            raise OptionError(f"out must be a directory path or None, not {out!r}")
        if not isinstance(prefix, str):
            raise OptionError(f"prefix must be a string (the logged metrics' prefix), not {prefix!r}")
        if tokenizer is not None and not callable(tokenizer):
            raise OptionError(f"tokenizer must be the model's tokenizer (or None: the trainer's), not {tokenizer!r}")
        try:
            from ..runner.config import policy_given

            policy = policy_given(policy)
            self.policy = VerdictPolicy.from_dict({} if policy is None else policy)
        except ValueError as exc:
            raise OptionError(f"CrosspatchCallback policy: {exc}") from None
        # evenly spaced through the set, in its order: a file sorted by category or split is covered whole
        count = min(max_prompts, len(items))
        self.prompts = [items[k * len(items) // count] for k in range(count)]
        self.skipped_prompts = len(items) - len(self.prompts)
        self.base, self.boundary, self.every_n_steps, self.on_save_enabled = base, boundary, every_n_steps, on_save
        self.max_new_tokens, self.bootstrap, self.seed = max_new_tokens, bootstrap, seed
        self.stop_on_fail, self.out, self.tokenizer, self.prefix, self.verbose = stop_on_fail, out, tokenizer, prefix, verbose
        self.chat_template = chat_template
        self.history: list[dict] = []
        self.trainer = None
        self._base_model = None
        self._done: dict[int, dict | None] = {}  # None: a step another process diagnosed
        self._place = TrainingPlace(Path(out) if out is not None else None)  # set when training begins
        self._trainings = 0  # trainings begun (hyperparameter-search trials are trainings of their own)
        self._main_process = True

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, trainer) -> CrosspatchCallback:
        """Add this callback to ``trainer`` and log through ``trainer.log`` (so every logger the
        trainer reports to receives the numbers). Returns self."""
        self.trainer = trainer
        trainer.add_callback(self)
        if self.tokenizer is None:
            self.tokenizer = getattr(trainer, "processing_class", None) or getattr(trainer, "tokenizer", None)
        return self

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"crosspatch: {message}", flush=True)

    # -- events ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        refuse_sharded_training(args, model)
        check_it_runs(self.every_n_steps, self.on_save_enabled, args, state)
        model = _inner(model)
        if self.tokenizer is None:
            self.tokenizer = processing_class or kwargs.get("tokenizer")
        if self.tokenizer is None:
            raise OptionError("CrosspatchCallback needs the tokenizer: give tokenizer=, or pass processing_class to "
                              "the trainer")
        self._check_image_prompts(model)
        if self.chat_template:  # refused now, not at the first diagnostic, hours in
            from ..runner.checks import check_chat_template

            check_chat_template(self._text_tokenizer())
        if model is not None and not is_peft_model(model) and self.base is None:
            raise OptionError("CrosspatchCallback on a full fine-tune needs base= (the base checkpoint's path or "
                              "module); for a PEFT model the base is the adapter switched off")
        check_base_dtype(_inner(self.base), model)
        # the trainer's flag; outside a trainer (a call by hand) this process is the only one
        self._main_process = bool(getattr(state, "is_world_process_zero", True))
        if model is not None and not is_peft_model(model) and self._base_model is None and self._main_process:
            self._base_model = self._load_base(model)  # loaded now: a broken base named before training
        start = int(getattr(state, "global_step", 0) or 0)  # a checkpoint's step where training resumes from one
        self._trainings += 1
        self._place = place_of_training(self.out, self.trainer, args, state, self._trainings)
        self._resume_at(start)
        if not self._main_process:
            return control  # the main process checks out= and says what it will do
        claim_out(self._place.out, str(self._place.checkpoints) if self._place.checkpoints else None, start, self._say)
        if not callable(getattr(self._text_tokenizer(), "get_vocab", None)):
            raise OptionError(f"CrosspatchCallback needs a Hugging Face tokenizer (or a processor holding one), not "
                              f"{type(self.tokenizer).__name__}: give tokenizer=")
        extra = f" ({len(self.prompts)} of {len(self.prompts) + self.skipped_prompts}, evenly spaced through the set)" \
            if self.skipped_prompts else ""
        when = ", ".join(([f"every {self.every_n_steps} steps"] if self.every_n_steps else [])
                         + (["at each save"] if self.on_save_enabled else []))
        self._say(f"diagnostic {when} on {len(self.prompts)} prompts{extra}, {self.max_new_tokens} new tokens, "
                  f"boundary {self.boundary}")
        return control

    def _resume_at(self, start_step: int) -> None:
        """A training (re)started at ``start_step`` diagnoses its later steps again, on its own
        weights: what this callback holds of them came from a continuation it abandoned (the same
        callback trains again from an earlier checkpoint)."""
        self._done = {step: row for step, row in self._done.items() if step <= start_step}
        self.history = [row for row in self.history if row["step"] <= start_step or row.get("trial") != self._place.trial]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._diagnose(state, control, model)
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if not self.on_save_enabled:
            return control
        row = self._diagnose(state, control, model)
        known = self._place.checkpoints is not None or self._place.search_root is not None
        place = self._place if known else TrainingPlace(None, Path(args.output_dir))  # (training begun by hand)
        checkpoint = place.checkpoint(state.global_step)
        if row is not None and checkpoint is not None:
            write_whole(checkpoint / "crosspatch.json", json_document(row))
        return control

    # -- the diagnostic -------------------------------------------------------------------------
    def _check_image_prompts(self, model) -> None:
        """Image prompts need a vision-language model and its processor (the trainer's
        ``processing_class``, or ``tokenizer=``): refused when training begins, not at the first
        diagnostic, hours in."""
        from ..errors import PromptImageError

        images = [p.id for p in self.prompts if p.metadata.get("image")]
        if not images:
            return
        shown = ", ".join(images[:3])
        if model is not None and getattr(getattr(model, "config", None), "vision_config", None) is None:
            raise PromptImageError(f"prompt(s) {shown} have an image, but the model trained is a text-only model")
        if self._processor() is None:
            raise PromptImageError(f"prompt(s) {shown} have an image: give the model's processor (the trainer's "
                                   "processing_class, or tokenizer=processor), not its tokenizer alone")

    def _processor(self):
        """The vision-language processor the trainer holds in place of a tokenizer, else None."""
        return self.tokenizer if getattr(self.tokenizer, "image_processor", None) is not None else None

    def _text_tokenizer(self):
        """The tokenizer that reads the prompts' text: the one inside a processor the trainer holds
        (a vision-language model's, or any other kind's), else the tokenizer given."""
        inner = getattr(self.tokenizer, "tokenizer", None)
        return inner if callable(getattr(inner, "get_vocab", None)) else self.tokenizer

    def _pair(self, model):
        from ..execution import pair_from_models, pair_from_peft_model

        processor = self._processor()
        tokenizer = self._text_tokenizer()
        if is_peft_model(model):
            return pair_from_peft_model(model, tokenizer, processors=processor)
        if self._base_model is None:
            self._base_model = self._load_base(model)
        device = next(model.parameters()).device
        self._base_model.to(device)
        return pair_from_models(self._base_model, model, tokenizer, processors=processor)

    def _load_base(self, model):
        """The base of a full fine-tune: the module given, or the checkpoint at ``base=`` loaded as
        ``crosspatch run`` loads one (safetensors, no remote code, a vision-language base as its
        image-text-to-text model; a checkpoint lacking weights is a ModelLoadError, where
        transformers would initialise them at random), on the CPU in the dtype of the model trained."""
        import torch

        if isinstance(self.base, torch.nn.Module):
            return self.base
        from ..models.loading import DTYPES, dtype_name, load_causal_lm
        from ..models.options import LoadOptions

        dtype = next(model.parameters()).dtype
        name = dtype_name(dtype)
        try:
            base = load_causal_lm(str(self.base), LoadOptions(dtype=name if name in DTYPES else "float32", device="cpu"))
        except ModelLoadError as exc:
            raise ModelLoadError(f"CrosspatchCallback base= {self.base}: {exc}") from None
        return base if name in DTYPES else base.to(dtype)  # (a float64 model)

    def _diagnose(self, state, control, model) -> dict | None:
        """The diagnostic at this step (once a step), on the main process; None on the others,
        which follow its stop decision."""
        step = int(state.global_step)
        if step in self._done:
            return self._done[step]
        if not self._main_process:
            self._done[step] = None
            self._follow_stop(control, None)
            return None
        if model is None:
            raise OptionError("the trainer passed no model to CrosspatchCallback")
        model = _inner(model)
        import crosspatch

        started = time.perf_counter()
        try:
            pair = self._pair(model)
            out = self._place.out / f"step-{step}" if self._place.out is not None else None
            result = crosspatch.run(pair, self.prompts, boundary=self.boundary, max_new_tokens=self.max_new_tokens,
                                    bootstrap=self.bootstrap, seed=self.seed, out=out, progress=False,
                                    policy=self.policy.as_dict(), chat_template=self.chat_template)
        finally:  # (the run computes the model in eval mode and leaves it training)
            if self._base_model is not None and self.base is not self._base_model:
                self._base_model.to("cpu")  # pyright: ignore[reportCallIssue, reportArgumentType] - a torch module
        seconds = time.perf_counter() - started
        row = self._row(step, result, seconds)
        self._done[step] = row
        self.history.append(row)
        if self._place.out is not None:
            self._place.out.mkdir(parents=True, exist_ok=True)
            with open(self._place.out / STEPS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json_line(row))
        logs = {f"{self.prefix}{k}": v for k, v in row["metrics"].items() if v is not None}
        if self.trainer is not None:
            self.trainer.log(logs)
        else:
            state.log_history.append({**logs, "step": step})
        effects = ", ".join(f"{k} {row['metrics'][k]:+.3f}" for k in METRICS if row["metrics"].get(k) is not None)
        self._say(f"step {step}: {effects + '; ' if effects else ''}{row['verdict']} ({row['events']} events, "
                  f"{seconds:.1f} s)")  # no effects where no event was found (an adapter not yet trained)
        if self.stop_on_fail and not row["passed"]:
            self._say(f"stopping training: verdict {row['verdict']} is not one the policy passes")
        self._follow_stop(control, row)
        return row

    def _follow_stop(self, control, row: dict | None) -> None:
        """With ``stop_on_fail``, stop when the main process's verdict fails the policy: in a
        distributed training the decision goes from the main process to every other, so that all
        stop at the same step (one stopping alone would leave the others waiting for it)."""
        if not self.stop_on_fail:
            return
        stop = row is not None and not row["passed"]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            decision = [stop]
            dist.broadcast_object_list(decision, src=0)  # the trainer's main process is global rank 0
            stop = bool(decision[0])
        if stop:
            control.should_training_stop = True

    def _row(self, step: int, result, seconds: float) -> dict:
        from ..runner.summary import effects_at

        summary = result.summary
        boundary = (summary.get("verdict") or {}).get("boundary")
        # the numbers the verdict was decided on: its readout (common-IT unless the policy says common-PT)
        block = effects_at(summary, boundary, verdict_readout(summary.get("verdict"))) or {}
        metrics: dict[str, float | None] = {}
        for name in METRICS:
            value = block.get(name) or {}
            metrics[name] = value.get("mean")
            ci = value.get("ci")
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = (ci[0], ci[1]) if ci else (None, None)
        verdict = (summary.get("verdict") or {}).get("verdict")
        passed = verdict in self.policy.pass_verdicts
        metrics["events"] = float(block.get("n_events") or 0)
        metrics["passed"] = float(passed)
        return {"step": step, **({"trial": self._place.trial} if self._place.trial else {}), "boundary": boundary,
                "metrics": metrics, "verdict": verdict, "passed": passed, "events": int(block.get("n_events") or 0),
                "seconds": round(seconds, 3)}


def _inner(model: Any) -> Any:
    """The model inside a compiled or parallel wrapper (``trainer.model`` may be compiled)."""
    from ..execution.in_memory import unwrapped_module

    return unwrapped_module(model)  # None stays None
