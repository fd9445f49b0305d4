"""Paper-scale runs on Cloud TPU: Llama-2-7B/13B or Mistral-7B students (the paper's), or
Gemma-2-9B and Qwen3-8B (what TPU users pick today), the whole pipeline,
sized so that every program fits its slice (checked by `srit-jax plan`; see docs/tpu.md).

    srit-jax plan --config=configs/paper.py:llama2_7b,v5e-8 --topology=v5e-8
    srit-jax pipeline --config=configs/paper.py:llama2_7b,v4-16 --workdir=RUN --distributed
    srit-jax pipeline --config=configs/paper.py:llama2_13b,v5e-8,qlora --workdir=RUN --distributed
    tpu_scripts/launch.sh --phase pipeline --config '~/srit/configs/paper.py:mistral_7b,v5e-8' ...

The variant is "student,slice[,method]". The method is `full` (every parameter trains: float32
master weights and AdamW moments, 16 bytes a parameter with the gradients), `lora` (rank-8
adapters over a bfloat16 base, as the method's predecessor tuned Llama-2) or `qlora` (the base
in NF4); left out, it is the slice's own: full fine-tuning where it fits with room to spare,
LoRA where it does not (see SIZES). Rows per step are the most that fit (1024 positions each,
layers recomputed in the backward pass): for a planned variant, what the 95%-of-HBM rule of
docs/tpu.md allows by its plan; the SFT and DPO steps take no gradient accumulation, which
would keep two more float32 gradient copies per chip. The SFT run is about three epochs
whatever the rows (fewer, larger steps where more rows fit); DPO runs 600 steps of half as
many pairs as SFT rows.

Students load from the Hugging Face hub (accept their licences first; HF_TOKEN in the
environment). Teacher demonstrations come from an OpenAI-compatible endpoint serving a large
model (Llama-2-70B chat for the in-family Llama runs, Mixtral for Mistral: point
teacher.base_url at your vLLM/TGI server), or set demos.teacher.kind="precomputed" to use
the PaLM 540B files for CSQA (out-family). Parameters and optimizer states shard over every
chip of the slice (FSDP over the slice's interconnect); each host feeds its own rows.
"""

from srit_jax.configs import pipeline, variants
from srit_jax.planning import topology

STUDENTS = {
  # name: (hub id, teacher model served behind the OpenAI-compatible endpoint)
  "llama2_7b": ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-70b-chat-hf"),
  "llama2_13b": ("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-chat-hf"),
  "mistral_7b": ("mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
  "gemma2_9b": ("google/gemma-2-9b", "google/gemma-2-27b-it"),
  "qwen3_8b": ("Qwen/Qwen3-8B-Base", "Qwen/Qwen3-32B"),
}
SLICES = ("v4-8", "v4-16", "v4-32", "v5e-8", "v5e-16", "v5e-32", "v5p-8", "v6e-8")
METHODS = ("", "full", "lora", "qlora")

# (student, slice): (its own method, training rows per chip with full fine-tuning, with LoRA,
# with QLoRA). Measured with `srit-jax plan` (docs/tpu.md): full fine-tuning is the default
# where its largest program stays under 95% of a chip's HBM, and a planned variant's rows are
# the most the 95% rule allows by its plan (# planned: the own method's; the other methods'
# rows follow their own `,full` / `,lora` / `,qlora` plans); the others' are estimates from the
# planned rows of the same slice and method, until their plans.
SIZES = {
  ("llama2_7b", "v4-8"): ("lora", 1, 16, 32),  # planned; full fits at 1 row per chip, with 98% of HBM in use
  ("llama2_7b", "v4-16"): ("full", 8, 4, 4),  # planned
  ("llama2_7b", "v4-32"): ("full", 16, 4, 4),  # planned
  ("llama2_7b", "v5e-8"): ("lora", 1, 16, 16),  # planned
  ("llama2_7b", "v5e-16"): ("full", 4, 4, 4),  # planned
  ("llama2_7b", "v5e-32"): ("full", 8, 4, 4),  # planned
  ("llama2_7b", "v5p-8"): ("full", 32, 8, 8),  # planned
  ("llama2_7b", "v6e-8"): ("full", 8, 4, 4),  # planned
  ("mistral_7b", "v4-8"): ("lora", 1, 32, 32),  # planned
  ("mistral_7b", "v4-16"): ("full", 8, 4, 4),  # planned
  ("mistral_7b", "v4-32"): ("full", 16, 4, 4),  # planned
  ("mistral_7b", "v5e-8"): ("lora", 1, 16, 16),  # planned
  ("mistral_7b", "v5e-16"): ("full", 1, 4, 4),  # planned
  ("mistral_7b", "v5e-32"): ("full", 8, 4, 4),  # planned
  ("mistral_7b", "v5p-8"): ("full", 32, 8, 8),  # planned
  ("mistral_7b", "v6e-8"): ("full", 8, 4, 4),  # planned
  ("llama2_13b", "v4-8"): ("lora", 1, 16, 16),  # planned
  ("llama2_13b", "v4-16"): ("lora", 1, 16, 16),  # planned
  ("llama2_13b", "v4-32"): ("full", 4, 4, 4),  # planned
  ("llama2_13b", "v5e-8"): ("qlora", 1, 8, 8),  # planned
  ("llama2_13b", "v5e-16"): ("lora", 1, 8, 8),  # planned
  ("llama2_13b", "v5e-32"): ("full", 1, 4, 4),  # planned
  ("llama2_13b", "v5p-8"): ("full", 8, 4, 4),  # planned
  ("llama2_13b", "v6e-8"): ("lora", 1, 16, 16),  # planned
  # 9.2B parameters, a 256k vocabulary (logits of a 1024-position row: 1 GB in float32).
  ("gemma2_9b", "v4-8"): ("lora", 1, 16, 16),  # planned
  ("gemma2_9b", "v4-16"): ("full", 1, 4, 4),  # planned
  ("gemma2_9b", "v4-32"): ("full", 16, 4, 4),  # planned
  ("gemma2_9b", "v5e-8"): ("lora", 1, 8, 8),  # planned
  ("gemma2_9b", "v5e-16"): ("full", 1, 4, 4),  # planned
  ("gemma2_9b", "v5e-32"): ("full", 4, 4, 4),  # planned
  ("gemma2_9b", "v5p-8"): ("full", 32, 4, 4),  # planned
  ("gemma2_9b", "v6e-8"): ("full", 1, 4, 4),  # planned
  # 8.2B parameters, a 152k vocabulary.
  ("qwen3_8b", "v4-8"): ("lora", 1, 32, 32),  # planned
  ("qwen3_8b", "v4-16"): ("full", 4, 4, 4),  # planned
  ("qwen3_8b", "v4-32"): ("full", 16, 4, 4),  # planned
  ("qwen3_8b", "v5e-8"): ("lora", 1, 16, 16),  # planned
  ("qwen3_8b", "v5e-16"): ("full", 1, 4, 4),  # planned
  ("qwen3_8b", "v5e-32"): ("full", 8, 4, 4),  # planned
  ("qwen3_8b", "v5p-8"): ("full", 32, 8, 8),  # planned
  ("qwen3_8b", "v6e-8"): ("full", 4, 4, 4),  # planned
}

VARIANTS = (tuple(STUDENTS), SLICES, METHODS)  # student,slice[,method]


def get_config(variant: str = ""):
  student, slice_name, method = variants(variant, __file__, *VARIANTS)
  hub_id, teacher_model = STUDENTS[student]
  own_method, *rows_per_chip = SIZES[(student, slice_name)]
  method = method or own_method
  chips = topology.SLICES[slice_name].devices
  config = pipeline.get_config()

  config.student = hub_id
  config.train_task = "gsm8k"
  config.in_domain_tasks = "gsm8k,multiarith"
  config.out_domain_tasks = "svamp,csqa,obqa,piqa,siqa,mmlu"
  config.source = "hub"

  config.demos.teacher.kind = "openai"
  config.demos.teacher.model = teacher_model
  config.demos.teacher.base_url = "http://localhost:8000/v1"  # your vLLM / TGI server
  config.demos.teacher.temperature = 0.7
  config.demos.num_samples = 2
  config.demos.keep = "correct"

  rows = chips * dict(zip(("full", "lora", "qlora"), rows_per_chip))[method]
  for phase in (config.sft, config.refine):
    phase.dtype = "bfloat16"  # compute; master weights (or adapters) stay float32
    phase.param_dtype = "float32"
    phase.remat_policy = "full"
    phase.mesh.update(data=1, fsdp=chips, tensor=1)
    if method != "full":
      phase.lora.update(
        rank=8, alpha=16.0, base_dtype="bfloat16", base_quantization="nf4" if method == "qlora" else "none"
      )
  config.eval.dtype = "bfloat16"
  config.eval.mesh.update(data=1, fsdp=chips, tensor=1)

  # About three epochs of ~30k demonstrations of ~300 tokens packed into 1024-position rows.
  config.sft.max_length = 1024
  config.sft.batch_size = rows
  config.sft.num_steps = max(100, 27_000 // rows)
  config.sft.optimizer.learning_rate = 2e-5 if method == "full" else 2e-4
  config.sft.optimizer.warmup_steps = min(50, config.sft.num_steps // 10)
  config.sft.save_every = 250

  # Generation: the KV cache of a 7B model holds about 0.5 MB a position; 8 rows a chip leave room.
  config.refine.num_cot_samples = 4
  config.refine.num_direct_samples = 1
  config.refine.generate_batch_size = 8 * chips
  config.refine.max_new_tokens = 384
  config.refine.max_length = 1024
  config.refine.batch_size = max(chips, rows // 2)  # pairs: two rows each
  config.refine.num_steps = 600
  config.refine.beta = 0.1
  config.refine.optimizer.learning_rate = 5e-7 if method == "full" else 5e-6
  config.refine.optimizer.warmup_steps = 30
  config.refine.save_every = 100
  # The held-out pairs (a tenth of the questions') scored every 100 steps: every 10 steps they
  # would cost the slice about 3.7 times the DPO steps themselves (srit-jax plan's time table).
  config.refine.eval_every = 100
  config.refine.teacher_fallback = True

  config.eval.limit = 0  # whole test sets
  config.eval.batch_size = 8 * chips
  config.eval.max_new_tokens = 384
  return config
