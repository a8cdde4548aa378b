"""A two-process DDP training with CrosspatchCallback (run by torchrun from
``test_integrations.py``, gloo on the CPU): a zoo LoRA, a diagnostic every 2 steps, a policy that
fails, ``stop_on_fail``. Each process writes its last step and how many diagnostics it ran to
``rank-<RANK>.txt``."""

import json
import os
import sys

from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

from crosspatch.workflows.callback import CrosspatchCallback
from crosspatch.zoo import zoo_path

Z, out = zoo_path(), sys.argv[1]
prompts = [json.loads(line) for line in (Z / "prompts" / "all.jsonl").read_text().splitlines()[::24]]
tokenizer = AutoTokenizer.from_pretrained(str(Z / "tokenizer"))
model = AutoModelForCausalLM.from_pretrained(str(Z / "base"), dtype="float32")
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
data = Dataset.from_list([{"input_ids": tokenizer(p["prompt"])["input_ids"][:64]} for p in prompts * 4])
args = TrainingArguments(output_dir=f"{out}/trainer", max_steps=6, save_strategy="no", per_device_train_batch_size=4,
                         learning_rate=1e-2, report_to=[], use_cpu=True, ddp_backend="gloo", disable_tqdm=True,
                         dataloader_num_workers=0, seed=0)
callback = CrosspatchCallback(prompts, out=f"{out}/diag", every_n_steps=2, on_save=False, max_new_tokens=8,
                              bootstrap=100, boundary=4, verbose=False, stop_on_fail=True,
                              policy={"pass_verdicts": ["portable"]})  # fails whatever two steps learn
trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
callback.attach(trainer).trainer.train()  # pyright: ignore[reportOptionalMemberAccess]
with open(f"{out}/rank-{os.environ['RANK']}.txt", "w", encoding="utf-8") as fh:  # the processes' prints interleave
    fh.write(f"stopped at step {trainer.state.global_step}, {len(callback.history)} diagnostic(s)")
# Trainer leaves the process group up; torch's gloo aborts now and then at interpreter exit
# ("terminate called without an active exception", with or without the callback) unless it is
# destroyed, as torch's documentation asks of every script that initialised one.
import torch.distributed as dist  # noqa: E402

if dist.is_initialized():
    dist.destroy_process_group()
# gloo's threads still abort now and then in the interpreter's teardown on a loaded machine (seen
# after destroy_process_group too): everything this process had to do is done and written, so it
# leaves without that teardown
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
