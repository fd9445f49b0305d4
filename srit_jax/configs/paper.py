"""Paper-scale runs on Cloud TPU: Llama-2-7B/13B or Mistral-7B students, the whole pipeline.

    srit-jax pipeline --config=configs/paper.py:llama2_7b,v4-8 --workdir=RUN --distributed
    tpu_scripts/launch.sh --phase pipeline --config '~/srit/configs/paper.py:mistral_7b,v5e-8' ...

The variant is "student,slice". Students load from the Hugging Face hub (accept their
licences first; HF_TOKEN in the environment). Teacher demonstrations come from an
OpenAI-compatible endpoint serving a large model (Llama-2-70B chat for the in-family Llama
runs, Mixtral for Mistral: point teacher.base_url at your vLLM/TGI server), or set
demos.teacher.kind="precomputed" to use the PaLM 540B files for CSQA (out-family).
The mesh puts parameters and optimizer states across chips (FSDP) and data across hosts.
"""

from srit_jax.configs import pipeline, variants

STUDENTS = {
  # name: (hub id, teacher model served behind the OpenAI-compatible endpoint)
  "llama2_7b": ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-70b-chat-hf"),
  "llama2_13b": ("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-chat-hf"),
  "mistral_7b": ("mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
}
SLICES = {
  # slice: (chips, hosts) — one process per host, every chip in the mesh
  "v4-8": (4, 1),
  "v4-16": (8, 2),
  "v4-32": (16, 4),
  "v5e-8": (8, 1),
  "v5e-16": (16, 4),
  "v5e-32": (32, 8),
}


VARIANTS = (tuple(STUDENTS), tuple(SLICES))  # student,slice


def get_config(variant: str = ""):
  student, slice_name = variants(variant, __file__, *VARIANTS)
  hub_id, teacher_model = STUDENTS[student]
  chips, hosts = SLICES[slice_name]
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

  for phase in (config.sft, config.refine):
    phase.dtype = "bfloat16"  # compute; master weights stay float32
    phase.param_dtype = "float32"
    phase.remat_policy = "dots"
    phase.mesh.update(data=hosts, fsdp=chips // hosts, tensor=1)
  config.eval.dtype = "bfloat16"
  config.eval.mesh.update(data=1, fsdp=chips, tensor=1)

  config.sft.max_length = 1024
  config.sft.batch_size = 64
  config.sft.num_steps = 1500  # about 3 epochs of ~30k demonstrations packed
  config.sft.optimizer.learning_rate = 2e-5
  config.sft.optimizer.warmup_steps = 50
  config.sft.save_every = 250

  config.refine.num_cot_samples = 4
  config.refine.num_direct_samples = 1
  config.refine.generate_batch_size = 256
  config.refine.max_new_tokens = 384
  config.refine.max_length = 1024
  config.refine.batch_size = 32
  config.refine.num_steps = 600
  config.refine.beta = 0.1
  config.refine.optimizer.learning_rate = 5e-7
  config.refine.optimizer.warmup_steps = 30
  config.refine.save_every = 100
  config.refine.teacher_fallback = True

  config.eval.limit = 0  # whole test sets
  config.eval.batch_size = 256
  config.eval.max_new_tokens = 384
  return config
