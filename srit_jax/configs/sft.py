"""Instruction tuning (SFT) of a student on teacher demonstrations.

    srit-jax sft --config=configs/sft.py --config.train_file=demos.jsonl --workdir=runs/sft
    srit-jax sft --config=configs/sft.py:tiny ...     # small rows and batch, for CPU checks

Records are JSON Lines with "instruction", optional "input", and "output" (the teacher's
chain-of-thought answer). Run it again with the same --workdir to resume.
"""

import ml_collections

from srit_jax.configs import lora, optimizer, variants

VARIANTS = (("", "tiny"),)


def get_config(variant: str = ""):
  (variant,) = variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = "smollm2-135m-instruct"  # known name, HF directory or .gguf file
  config.dtype = "float32"  # compute dtype: float32, or bfloat16 on TPU/GPU
  config.param_dtype = "float32"  # master weights
  config.remat_policy = "none"  # none | full | dots | dots_no_batch
  config.attention = "auto"  # auto (splash on TPU, cuDNN/blockwise on GPU, XLA on CPU) | xla | splash | blockwise
  config.train_file = ""  # JSONL instruction records (required)
  config.eval_file = ""  # JSONL records for held-out loss; empty: none (or heldout_fraction's)
  config.heldout_fraction = 0.0  # > 0: this share of train_file's questions, chosen by hash, is held out instead
  config.eval_every = 0  # steps between held-out losses; 0 = never
  config.select_checkpoint = "last"  # last | best_heldout (the evaluated step of lowest held-out loss is exported)
  # > 0: training stops once this many held-out evaluations in a row have not lowered the held-out
  # loss (with select_checkpoint="best_heldout" and eval_every); 0 = every step is run
  config.early_stopping_patience = 0
  config.skip_bad_records = False  # skip and count malformed records instead of stopping
  config.use_chat_template = True  # the student's chat template; False: plain "### Instruction" format
  config.max_length = 512  # positions per row; longer examples lose prompt tokens first
  config.batch_size = 8  # rows per step (all processes together)
  config.num_microbatches = 1  # gradient accumulation inside the step
  config.pack = True  # several examples per row, each its own segment
  config.loss_normalization = "token"  # token: every answer token weighs 1; sequence: every answer weighs 1
  config.chunk_size = 128  # positions per vocabulary-projection chunk of the loss
  config.num_steps = 100  # optimizer steps
  config.num_epochs = 0.0  # > 0: num_steps from the data instead, this many passes over the packed examples
  config.seed = 0  # data order
  config.optimizer = optimizer.get_config()  # AdamW settings (see srit_jax/optimizer.py)
  config.lora = lora.get_config()  # LoRA / QLoRA adapters (rank 0: every parameter trains)
  config.save_every = 50  # steps between checkpoints (and at the end)
  config.keep_checkpoints = 3  # checkpoints kept
  config.async_checkpoints = True  # save in the background
  config.export = True  # write the final parameters as an HF directory to workdir/export
  config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # mesh axis sizes; -1 = the rest
  if variant == "tiny":
    config.max_length = 128
    config.batch_size = 4
    config.num_steps = 8
    config.save_every = 2
    config.optimizer.warmup_steps = 0
    config.optimizer.learning_rate = 1e-3
  return config
