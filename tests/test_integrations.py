"""CrosspatchCallback in a real TRL training run: a zoo LoRA trained for a few dozen steps logs
the diagnostic through the trainer at each save, and the logged numbers equal a separate
``crosspatch run`` on the saved checkpoints; the checkpoints then form a lineage by step."""

from __future__ import annotations

import functools
import json

import pytest

from crosspatch.errors import BoundaryError, CheckpointDiscoveryError, ModelLoadError, ModelPathNotFoundError, OptionError
from crosspatch.workflows.callback import CrosspatchCallback
from crosspatch.zoo import zoo_path

Z = zoo_path()
PROMPTS = [json.loads(line) for line in (Z / "prompts" / "all.jsonl").read_text().splitlines()[::12]]  # 8 prompts
SETTINGS = dict(boundary=4, max_new_tokens=16, bootstrap=200, seed=0)


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Z / "tokenizer"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import gzip

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = tmp_path_factory.mktemp("train")
    with gzip.open(Z / "data" / "instructions.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(256), fh)]
    data = Dataset.from_list([{"text": r["prompt"] + r["response"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(str(Z / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(str(Z / "base"), dtype="float32")
    args = SFTConfig(output_dir=str(out / "trainer"), max_steps=24, save_steps=12, per_device_train_batch_size=8,
                     learning_rate=1e-2, logging_steps=6, report_to=[], use_cpu=True, seed=0, save_only_model=True,
                     max_length=128, disable_tqdm=True, dataloader_num_workers=0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    callback = CrosspatchCallback(PROMPTS, out=out / "diag", verbose=False, **SETTINGS).attach(trainer)
    trainer.train()
    return out, callback, trainer


@pytest.mark.slow
def test_logged_numbers_equal_a_separate_run_on_each_checkpoint(trained):
    import crosspatch

    out, callback, trainer = trained
    assert [row["step"] for row in callback.history] == [12, 24]
    assert callback.history[0]["metrics"]["E_IT"] != callback.history[1]["metrics"]["E_IT"]  # the adapter trained
    logged = [entry for entry in trainer.state.log_history if "crosspatch/E_IT" in entry]
    assert [entry["step"] for entry in logged] == [12, 24]  # through the trainer's own logging
    for row, entry in zip(callback.history, logged):
        checkpoint = out / "trainer" / f"checkpoint-{row['step']}"
        assert json.loads((checkpoint / "crosspatch.json").read_text())["metrics"] == row["metrics"]
        pair = crosspatch.load_pair(str(Z / "base"), adapter=str(checkpoint))
        separate = crosspatch.run(pair, PROMPTS, progress=False, **SETTINGS)
        block = separate.summary["results"][str(SETTINGS["boundary"])]["common_it"]["all"]["effects"]
        for name in ("E_PT", "E_IT", "interaction"):
            assert entry[f"crosspatch/{name}"] == pytest.approx(block[name]["mean"], abs=1e-4)
            assert row["metrics"][f"{name}_ci_low"] == pytest.approx(block[name]["ci"][0], abs=1e-4)
    assert (out / "diag" / "steps.jsonl").read_text().count("\n") == 2


@pytest.mark.slow
def test_checkpoints_form_a_lineage_in_step_order(trained, tmp_path):
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.workflows.checkpoints import discover_checkpoints

    out, _, _ = trained
    found = discover_checkpoints(out / "trainer")
    assert [c.step for c in found] == [12, 24] and all(c.adapter for c in found)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    result = CliRunner().invoke(app, ["lineage", str(Z / "base"), "--checkpoints", str(out / "trainer"), "--prompts",
                                      str(prompts), "--boundary", "4", "--max-new-tokens", "16", "--bootstrap", "200",
                                      "--out", str(tmp_path / "lin"), "--quiet"])
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "lin" / "lineage.json").read_text())
    assert document["stages"] == ["step-12", "step-24"] and document["training_steps"] == {"step-12": 12, "step-24": 24}


def test_checkpoint_discovery_names_what_is_wrong(tmp_path):
    from crosspatch.workflows.checkpoints import discover_checkpoints

    with pytest.raises(CheckpointDiscoveryError, match="no checkpoint"):
        discover_checkpoints(tmp_path)
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "config.json").write_text("{}")
    with pytest.raises(CheckpointDiscoveryError, match="no model weights; is it still being written"):
        discover_checkpoints(tmp_path)
    (tmp_path / "checkpoint-5" / "global_step5").mkdir()  # DeepSpeed ZeRO-3's ranks' state, weights not gathered
    with pytest.raises(CheckpointDiscoveryError, match="no model weights; it is a DeepSpeed ZeRO checkpoint"):
        discover_checkpoints(tmp_path)
    (tmp_path / "checkpoint-5" / "global_step5").rmdir()
    with pytest.raises(CheckpointDiscoveryError, match="a trainer's output directory"):
        discover_checkpoints(None)  # type: ignore[arg-type]
    for name in ("checkpoint-5", "checkpoint-05"):  # one step, two directories: which is stage step-5?
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.json").write_text("{}", encoding="utf-8")
        (tmp_path / name / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointDiscoveryError, match="are both step 5"):
        discover_checkpoints(tmp_path)
    for trial in ("run-0", "run-1"):  # a hyperparameter search: each trial's checkpoints in a folder of its own
        (tmp_path / "search" / trial / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(CheckpointDiscoveryError, match="its folders run-0, run-1 hold some .* give one of them"):
        discover_checkpoints(tmp_path / "search")


def test_callback_options_are_checked_when_made(tmp_path):
    with pytest.raises(OptionError):
        CrosspatchCallback(PROMPTS, every_n_steps=0)
    (tmp_path / "policy.yml").write_text("pass_verdicts: [portable]\n")  # a file, as gate's --policy takes it
    assert CrosspatchCallback(PROMPTS, policy=tmp_path / "policy.yml").policy.pass_verdicts == ("portable",)
    with pytest.raises(OptionError):
        CrosspatchCallback(PROMPTS, on_save=False)
    with pytest.raises(OptionError):
        CrosspatchCallback(PROMPTS, policy={"nonsense": 1})
    assert len(CrosspatchCallback(PROMPTS, max_prompts=3).prompts) == 3
    assert [p.id for p in CrosspatchCallback(PROMPTS, max_prompts=32).prompts] == [p["id"] for p in PROMPTS]  # all
    ordered = [json.loads(line) for line in (Z / "prompts" / "all.jsonl").read_text().splitlines()]  # sorted by split
    sampled = CrosspatchCallback(ordered, max_prompts=6).prompts  # evenly spaced through the set, in its order
    assert [p.id for p in sampled] == [ordered[k * len(ordered) // 6]["id"] for k in range(6)]
    assert {p.metadata["split"] for p in sampled} == {r["split"] for r in ordered}
    with pytest.raises(ModelPathNotFoundError, match="CrosspatchCallback base= .*no such directory"):
        CrosspatchCallback(PROMPTS, base="./no-such-base")  # not at the first diagnostic, hours into training
    with pytest.raises(ModelLoadError, match="has no config.json"):
        CrosspatchCallback(PROMPTS, base=str(Z / "tokenizer"))
    with pytest.raises(OptionError, match="base= must be"):
        CrosspatchCallback(PROMPTS, base=42)
    assert CrosspatchCallback(PROMPTS, base=str(Z / "base")).base == str(Z / "base")
    for odd in ({"boundary": 0}, {"on_save": "no"}, {"stop_on_fail": "yes"}, {"verbose": "x"}, {"seed": -1},
                {"out": 5}, {"prefix": 5}, {"tokenizer": 5}, {"policy": []}, {"policy": {"pass_verdicts": []}}):
        with pytest.raises((OptionError, BoundaryError)):  # each would fail or mislead only during training
            CrosspatchCallback(PROMPTS, **odd)


def test_a_failing_policy_stops_training_and_marks_the_checkpoint(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    import crosspatch

    pair = crosspatch.load_pair(str(Z / "base"), adapter=str(Z / "it-lora-all"))
    with pair.use("tuned") as handle:
        peft_model = handle.module
    callback = CrosspatchCallback(PROMPTS, tokenizer=pair.tokenizer, policy={"pass_verdicts": ["no-late-effect"]},
                                  stop_on_fail=True, verbose=False, **SETTINGS)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    (tmp_path / "checkpoint-7").mkdir()
    state, control = TrainerState(global_step=7), TrainerControl()
    peft_model.train()
    callback.on_save(args, state, control, model=peft_model)
    mark = json.loads((tmp_path / "checkpoint-7" / "crosspatch.json").read_text())
    assert mark["passed"] is False and mark["verdict"] != "no-late-effect"
    assert control.should_training_stop and peft_model.training  # training mode restored
    assert state.log_history[-1]["step"] == 7 and "crosspatch/interaction" in state.log_history[-1]


def test_a_full_fine_tune_under_mixed_precision_logs_what_a_separate_run_finds(tmp_path):
    """Trainer and TRL (whose default is bf16) leave a full fine-tune's forward in accelerate's
    autocast: the diagnostic runs the model's own forward, as a run on its checkpoint does."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

    import crosspatch

    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(
            AutoModelForCausalLM.from_pretrained(str(Z / "it-full"), dtype="float32"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert "_original_forward" in model.__dict__  # the trainer's mixed-precision forward
    callback = CrosspatchCallback(PROMPTS, base=str(Z / "base"), tokenizer=AutoTokenizer.from_pretrained(str(Z / "it-full")),
                                  verbose=False, **SETTINGS)
    state = TrainerState(global_step=3)
    model.train()
    callback.on_save(TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True), state, TrainerControl(),
                     model=model)
    separate = crosspatch.run(crosspatch.load_pair(str(Z / "base"), tuned=str(Z / "it-full"), dtype="float32"), PROMPTS,
                              progress=False, **SETTINGS)
    block = separate.summary["results"][str(SETTINGS["boundary"])]["common_it"]["all"]["effects"]
    for name in ("E_PT", "E_IT", "interaction"):
        assert callback.history[0]["metrics"][name] == pytest.approx(block[name]["mean"], abs=1e-5)
    assert model.training and "_original_forward" in model.__dict__  # training goes on as it was


def test_a_callback_that_runs_only_at_saves_is_refused_when_the_training_saves_nothing(tmp_path):
    """With its default (at each save) and the trainer's ``save_strategy="no"`` the callback ran
    no diagnostic the whole training, and said it would: "diagnostic at each save". So did one
    every N steps of a training shorter than N steps, with no save to diagnose at."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    state = SimpleNamespace(global_step=0)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    with pytest.raises(OptionError, match="would never run.*save_strategy='no'"):
        CrosspatchCallback(PROMPTS, tokenizer=_tokenizer(), verbose=False).on_train_begin(args, state, None)
    CrosspatchCallback(PROMPTS, tokenizer=_tokenizer(), verbose=False, every_n_steps=10).on_train_begin(
        args, state, None)  # (every ten steps: it runs)
    short = SimpleNamespace(global_step=0, max_steps=50)  # every 200 steps of a 50-step training: never either
    with pytest.raises(OptionError, match="every_n_steps=200 is beyond this training's last step"):
        CrosspatchCallback(PROMPTS, tokenizer=_tokenizer(), verbose=False, every_n_steps=200).on_train_begin(
            args, short, None)
    with pytest.raises(OptionError, match="does not diagnose at saves"):
        CrosspatchCallback(PROMPTS, tokenizer=_tokenizer(), verbose=False, every_n_steps=200, on_save=False
                           ).on_train_begin(TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                                            short, None)


def test_the_callback_logs_the_numbers_its_verdict_was_decided_on_in_the_policys_readout():
    """Under a policy's ``readout: common_pt`` the logged effects were the common-IT ones, beside a
    ``passed`` decided on the common-PT ones."""
    from types import SimpleNamespace

    def block(e):
        return {"n_events": 8, "effects": {k: {"mean": e, "ci": [e - 0.1, e + 0.1]} for k in ("E_PT", "E_IT", "interaction")}}

    summary = {"verdict": {"verdict": "portable", "boundary": 2, "readout": "common_pt"},
               "results": {"2": {"common_it": {"all": block(0.25)}, "common_pt": {"all": block(1.75)}}}}
    callback = CrosspatchCallback(PROMPTS, verbose=False, policy={"readout": "common_pt"})
    row = callback._row(10, SimpleNamespace(summary=summary), 1.0)
    assert row["metrics"]["E_PT"] == 1.75 and row["metrics"]["interaction_ci_low"] == 1.65 and row["passed"]


def test_a_base_in_memory_of_another_dtype_is_refused_when_training_begins():
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(Z / "it-full"), dtype="float32")
    base = AutoModelForCausalLM.from_pretrained(str(Z / "base"), dtype="bfloat16")
    state = SimpleNamespace(global_step=0)
    with pytest.raises(OptionError, match="base bfloat16, the model trained float32"):  # not at the first diagnostic
        CrosspatchCallback(PROMPTS, base=base, tokenizer=_tokenizer(), verbose=False).on_train_begin(
            None, state, None, model=model)
    CrosspatchCallback(PROMPTS, base=base.to(torch.float32), tokenizer=_tokenizer(), verbose=False).on_train_begin(
        None, state, None, model=model)


def test_a_base_checkpoint_lacking_a_weight_is_refused_when_training_begins(tmp_path):
    """transformers initialises a missing weight at random and says so only in its log: the
    callback loads base= as crosspatch run does, so a broken base is named when training begins,
    not compared with at every diagnostic."""
    import shutil
    from types import SimpleNamespace

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    shutil.copytree(Z / "base", tmp_path / "base")
    weights = load_file(tmp_path / "base" / "model.safetensors")
    weights.pop("model.layers.1.mlp.down_proj.weight")
    save_file(weights, tmp_path / "base" / "model.safetensors", metadata={"format": "pt"})
    model = AutoModelForCausalLM.from_pretrained(str(Z / "it-full"), dtype="float32")
    callback = CrosspatchCallback(PROMPTS, base=tmp_path / "base", tokenizer=_tokenizer(), verbose=False)
    with pytest.raises(ModelLoadError, match="base= .*lacks 1 weight.*layers.1.mlp.down_proj"):
        callback.on_train_begin(None, SimpleNamespace(global_step=0), None, model=model)


def test_a_processor_of_another_kind_lends_its_tokenizer_and_no_tokenizer_is_refused_when_training_begins(tmp_path):
    """A trainer may hold a processor that reads no images (an audio model's): the tokenizer inside
    it reads the prompts; something that is no tokenizer is named when training begins."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    import crosspatch

    pair = crosspatch.load_pair(str(Z / "base"), adapter=str(Z / "it-lora-all"))
    with pair.use("tuned") as handle:
        peft_model = handle.module
    args, state = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True), TrainerState(global_step=2)
    class AudioProcessor:  # a processor that reads no images: a feature extractor and a tokenizer
        tokenizer, feature_extractor = pair.tokenizer, object()

        def __call__(self, text=None, audio=None):
            return self.tokenizer(text)

    rows = []
    for tokenizer in (pair.tokenizer, AudioProcessor()):
        callback = CrosspatchCallback(PROMPTS, tokenizer=tokenizer, verbose=False, **SETTINGS)
        callback.on_train_begin(args, state, TrainerControl(), model=peft_model)
        callback.on_save(args, state, TrainerControl(), model=peft_model)
        rows.append(callback.history[0]["metrics"])
    assert rows[0] == rows[1]
    with pytest.raises(OptionError, match="needs a Hugging Face tokenizer"):
        CrosspatchCallback(PROMPTS, tokenizer=lambda text: text, verbose=False).on_train_begin(
            args, state, TrainerControl(), model=peft_model)


def _diagnosed(out, steps):
    """``out`` as a callback leaves it after diagnosing ``steps``: a run directory and a row each."""
    for step in steps:
        (out / f"step-{step}").mkdir(parents=True)
        (out / f"step-{step}" / "summary.json").write_text(json.dumps({"step": step}))
    (out / "steps.jsonl").write_text("".join(json.dumps({"step": step}) + "\n" for step in steps))


def test_an_out_holding_another_trainings_diagnostics_is_refused_when_training_begins(tmp_path):
    from types import SimpleNamespace

    _diagnosed(tmp_path / "diag", [6, 12])
    callback = CrosspatchCallback(PROMPTS, out=tmp_path / "diag", tokenizer=_tokenizer(), verbose=False)
    args = SimpleNamespace(output_dir=str(tmp_path / "trainer"))
    for way in (None, args):  # a fresh training would meet step 6 (unowned out, or its own output directory)
        with pytest.raises(OptionError, match="step-6, step-12, another training's"):
            callback.on_train_begin(way, SimpleNamespace(global_step=0), None)
    callback.on_train_begin(args, SimpleNamespace(global_step=12), None)  # resumed at its last step: it adds later ones
    assert json.loads((tmp_path / "diag" / "training.json").read_text())["output_dir"] == str((tmp_path / "trainer").resolve())
    other = SimpleNamespace(output_dir=str(tmp_path / "other-trainer"))
    for start in (0, 12, 24):  # now owned: another training's output directory is refused wherever it starts
        with pytest.raises(OptionError, match="diagnostics of another training"):
            callback.on_train_begin(other, SimpleNamespace(global_step=start), None)
    assert sorted(p.name for p in (tmp_path / "diag").iterdir()) == ["step-12", "step-6", "steps.jsonl", "training.json"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OptionError, match="is a file, not a directory"):
        CrosspatchCallback(PROMPTS, out=tmp_path / "a-file", tokenizer=_tokenizer(), verbose=False).on_train_begin(
            args, SimpleNamespace(global_step=0), None)


def test_a_training_resumed_from_an_earlier_checkpoint_sets_aside_the_later_steps_it_left(tmp_path):
    """After a crash a training resumes from its last checkpoint, often before its last diagnostic:
    the diagnostics of the steps after it came from the abandoned continuation; they are set aside
    whole (never overwritten, never mixed into the steps the resumed training diagnoses again)."""
    from types import SimpleNamespace

    out, args = tmp_path / "diag", SimpleNamespace(output_dir=str(tmp_path / "trainer"))
    callback = CrosspatchCallback(PROMPTS, out=out, tokenizer=_tokenizer(), verbose=False)
    callback.on_train_begin(args, SimpleNamespace(global_step=0), None)  # the first attempt claims out
    _diagnosed(out, [6, 12, 18])
    callback.history = [{"step": step} for step in (6, 12, 18)]  # the same callback trains again (a notebook)
    callback._done = {step: {"step": step} for step in (6, 12, 18)}
    callback.on_train_begin(args, SimpleNamespace(global_step=12), None)  # resumed from checkpoint-12
    aside = out / "superseded" / "after-step-12"
    assert sorted(p.name for p in out.glob("step-*")) == ["step-12", "step-6"]
    assert json.loads((aside / "step-18" / "summary.json").read_text()) == {"step": 18}
    assert [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()] == [6, 12]
    assert [json.loads(line)["step"] for line in (aside / "steps.jsonl").read_text().splitlines()] == [18]
    assert [row["step"] for row in callback.history] == [6, 12] and 18 not in callback._done  # diagnosed again
    (out / "step-18").mkdir()  # the resumed training diagnosed step 18 again, then crashed once more
    callback.on_train_begin(args, SimpleNamespace(global_step=12), None)  # rewound to 12 a second time
    assert (out / "superseded" / "after-step-12-2" / "step-18").is_dir() and (aside / "step-18").is_dir()
    (out / "step-24").mkdir()  # a crash during the diagnostic at the save of checkpoint-24: no row logged
    callback.on_train_begin(args, SimpleNamespace(global_step=24), None)  # resumed from checkpoint-24
    assert (out / "superseded" / "after-step-24" / "step-24").is_dir()  # never diagnosed again: set aside too
    assert sorted(p.name for p in out.glob("step-*")) == ["step-12", "step-6"]
    import crosspatch
    from crosspatch.errors import NotARunDirectoryError

    with pytest.raises(NotARunDirectoryError, match="training callback's diagnostics.*the last: .*step-12"):
        crosspatch.open_run(out)  # out is no run: its step directories are


def test_each_trial_of_a_hyperparameter_search_diagnoses_apart_and_marks_its_own_checkpoints(tmp_path):
    """Trainer.hyperparameter_search trains one model per trial from step 0, each trial's checkpoints
    in its run directory (output_dir/run-<n>): each trial's diagnostics go to out/run-<n> (the
    second trial is not refused as another training, nor handed the first's rows), each marks its
    own checkpoints, and the history keeps both, by trial."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainingArguments

    import crosspatch

    pair = crosspatch.load_pair(str(Z / "base"), adapter=str(Z / "it-lora-all"))
    with pair.use("tuned") as handle:
        peft_model = handle.module
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True)
    callback = CrosspatchCallback(PROMPTS, tokenizer=pair.tokenizer, out=tmp_path / "diag", verbose=False, **SETTINGS)
    callback.trainer = SimpleNamespace(_get_output_dir=lambda trial: f"{args.output_dir}/run-{trial}", log=lambda logs: None)
    for trial in (0, 1):
        callback.trainer._trial = trial
        state = SimpleNamespace(global_step=0, is_hyper_param_search=True, is_world_process_zero=True, log_history=[])
        callback.on_train_begin(args, state, TrainerControl(), model=peft_model)
        (tmp_path / "trainer" / f"run-{trial}" / "checkpoint-4").mkdir(parents=True)
        state.global_step = 4
        callback.on_save(args, state, TrainerControl(), model=peft_model)
        assert (tmp_path / "trainer" / f"run-{trial}" / "checkpoint-4" / "crosspatch.json").is_file()
        assert (tmp_path / "diag" / f"run-{trial}" / "step-4" / "summary.json").is_file()
    assert [(row["trial"], row["step"]) for row in callback.history] == [("run-0", 4), ("run-1", 4)]
    # not attached (callbacks=[...]): the trial's run directory is unknown; its folder in out counts the
    # trials, and the checkpoint just saved is the newest of its step under output_dir
    loose = CrosspatchCallback(PROMPTS, tokenizer=pair.tokenizer, out=tmp_path / "loose", verbose=False, **SETTINGS)
    state = SimpleNamespace(global_step=0, is_hyper_param_search=True, is_world_process_zero=True, log_history=[])
    loose.on_train_begin(args, state, TrainerControl(), model=peft_model)
    (tmp_path / "trainer" / "run-2" / "checkpoint-4").mkdir(parents=True)
    state.global_step = 4
    loose.on_save(args, state, TrainerControl(), model=peft_model)
    assert (tmp_path / "trainer" / "run-2" / "checkpoint-4" / "crosspatch.json").is_file()
    assert (tmp_path / "loose" / "trial-1" / "step-4" / "summary.json").is_file()


def test_chat_prompts_need_the_callbacks_chat_template_and_a_tokenizer_that_has_one(tmp_path):
    """Eval prompts given as chats are rendered by the tokenizer's chat template when asked
    (chat_template=True, as ``run --chat-template``), refused when it is not; a tokenizer without a
    template is refused when training begins, not at the first diagnostic."""
    from types import SimpleNamespace

    from crosspatch.errors import ChatTemplateMissingError, PromptFileError

    chats = [{"id": f"c{k}", "messages": [{"role": "user", "content": p["prompt"]}]} for k, p in enumerate(PROMPTS)]
    with pytest.raises(PromptFileError, match="are chats .*pass chat_template=True"):
        CrosspatchCallback(chats)
    with pytest.raises(OptionError, match="chat_template must be True or False"):
        CrosspatchCallback(chats, chat_template="yes")
    class NoTemplate:  # a tokenizer (callable) without a chat template
        chat_template = None

        def __call__(self, text):
            return text

    callback = CrosspatchCallback(chats, chat_template=True, tokenizer=NoTemplate(), verbose=False)
    with pytest.raises(ChatTemplateMissingError):
        callback.on_train_begin(None, SimpleNamespace(global_step=0), None)


def test_a_model_sharded_across_processes_is_refused_when_training_begins():
    """ZeRO-3 and FSDP leave each process a part of every weight: no process can run the diagnostic
    alone, so training is refused at its start, not at the first diagnostic."""
    from types import SimpleNamespace

    import torch

    callback = CrosspatchCallback(PROMPTS, tokenizer=_tokenizer(), verbose=False)
    state = SimpleNamespace(global_step=0)
    zero3 = torch.nn.Linear(2, 2)
    zero3.weight.ds_id = 0  # what DeepSpeed ZeRO-3 marks its partitioned parameters with
    with pytest.raises(OptionError, match="sharded by DeepSpeed ZeRO-3.*--checkpoints"):
        callback.on_train_begin(None, state, None, model=zero3)

    class FullyShardedDataParallel(torch.nn.Module):  # torch's FSDP wrapper, by its name
        pass

    wrapped = torch.nn.Sequential(FullyShardedDataParallel())
    with pytest.raises(OptionError, match="sharded by FSDP"):
        callback.on_train_begin(None, state, None, model=wrapped)
    with pytest.raises(OptionError, match="sharded by FSDP"):
        callback.on_train_begin(SimpleNamespace(fsdp=["full_shard", "auto_wrap"]), state, None)
    whole = CrosspatchCallback(PROMPTS, base=str(Z / "base"), tokenizer=_tokenizer(), verbose=False)
    whole.on_train_begin(SimpleNamespace(fsdp=None), state, None, model=torch.nn.Linear(2, 2))  # DDP: whole weights


def test_under_distributed_training_only_the_main_process_diagnoses(tmp_path):
    """Another process of a distributed training neither runs the diagnostic nor writes anything:
    it follows the main process (whose stop decision reaches it through torch.distributed)."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainingArguments

    (tmp_path / "diag" / "step-12").mkdir(parents=True)  # the main process checks out=, not every process
    callback = CrosspatchCallback(PROMPTS, out=tmp_path / "diag", tokenizer=_tokenizer(), every_n_steps=2,
                                  stop_on_fail=True, verbose=False)
    callback.on_train_begin(None, SimpleNamespace(global_step=0, is_world_process_zero=False), None)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    (tmp_path / "checkpoint-2").mkdir()
    state, control = SimpleNamespace(global_step=2, is_world_process_zero=False), TrainerControl()
    callback.on_step_end(args, state, control, model=None)  # would be refused (no model) if it ran
    callback.on_save(args, state, control, model=None)
    assert callback.history == [] and not control.should_training_stop
    assert not (tmp_path / "checkpoint-2" / "crosspatch.json").exists()
    assert not (tmp_path / "diag" / "steps.jsonl").exists()


@pytest.mark.slow
def test_a_distributed_training_stops_on_every_process_at_the_main_processs_failing_verdict(tmp_path):
    """Two processes (torchrun, gloo on the CPU) train a zoo LoRA with DDP: the main process alone
    runs the diagnostic and writes one row per step, and its failing verdict stops both processes at
    the same step (a process stopping alone would leave the other waiting for it forever)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "distributed_training.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if Path("/sys/class/net/lo").exists():  # gloo on the loopback device: a host name that resolves nowhere is no matter
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finished = [(tmp_path / f"rank-{rank}.txt").read_text() for rank in (0, 1)]
    assert finished == ["stopped at step 2, 1 diagnostic(s)", "stopped at step 2, 0 diagnostic(s)"], done.stdout[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "diag" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] and rows[0]["passed"] is False
