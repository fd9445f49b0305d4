"""Self-refinement: the instructed student's own samples → preference pairs → DPO → export.

    srit-jax refine --config=configs/refine.py --config.model=runs/sft/export --workdir=runs/refine
    srit-jax refine --config=configs/refine.py:tiny ...   # few questions, short rows: CPU checks

Run it again with the same --workdir to resume (sampling and DPO both pick up where they stopped).
"""

import ml_collections

from srit_jax.configs import lora, optimizer, variants

QUESTIONS = ("task", "demos")  # where the training questions come from
SELECT_CHECKPOINT = ("last", "best_heldout")  # which step of the run is exported

VARIANTS = (("", "tiny"),)


def get_config(variant: str = ""):
  (variant,) = variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = "smollm2-135m-instruct"  # the instructed student (SFT export dir); also the frozen reference
  config.reference_model = ""  # empty: the reference is `model` itself; else another (the SFT student, iterating)
  config.dtype = "float32"  # compute dtype (the reference is kept in it)
  config.param_dtype = "float32"  # master weights
  config.remat_policy = "none"  # none | full | dots | dots_no_batch
  config.attention = "auto"  # auto (splash on TPU, cuDNN/blockwise on GPU, XLA on CPU) | xla | splash | blockwise
  # Training questions
  config.questions = "task"  # task: the task's training split; demos: the questions of demos_file
  config.new_questions = 0  # more training questions of the task that demos_file does not hold (scored by gold)
  config.task = "arith"  # a task of srit_jax.tasks.TASKS
  config.split = ""  # empty: the task's training split
  config.source = "auto"  # auto | local | hub | tfds
  config.data_dir = ""  # folder of local benchmark files
  config.hub_path = ""  # replaces the hub dataset id
  config.limit = 0  # questions at most; 0 = all
  config.seed = 0  # built-in tasks: which training problems; and the draw below (in a pipeline: the pipeline's seed)
  config.sampling_seed = 0  # another draw on the same questions: samples, held-out questions, pair order (0: seed's)
  config.round = 1  # round of an iterated refinement: each round samples with other seeds
  # Sampling the student
  config.num_cot_samples = 4  # CoT answers per question
  config.num_direct_samples = 1  # direct answers per question (the rejected side of cot_vs_direct)
  config.temperature = 0.7
  config.top_k = 0  # 0 = off
  config.top_p = 0.95  # 1 = off
  config.max_new_tokens = 256  # CoT answers
  config.max_new_tokens_direct = 16  # direct answers, after their opening "The answer is"; a line ends them
  config.generate_batch_size = 32  # rows per generation batch
  config.stop_strings = ("\nQuestion:",)
  config.use_chat_template = True  # the student's chat template (as in SFT)
  # Pairs
  config.strategy = "cot_vs_direct"  # cot_vs_direct | correct_vs_incorrect | mixed (both, one cap) | slip_corrected
  config.max_pairs_per_question = 2  # cap per question
  config.teacher_fallback = False  # no correct student answer: the teacher's demonstration is chosen
  config.demos_file = ""  # demos.jsonl of the demos phase (for teacher_fallback and questions="demos")
  config.heldout_fraction = 0.1  # share of questions whose pairs only measure reward accuracy
  # DPO
  config.beta = 0.1  # the one place beta lives
  # sigmoid | ipo | hinge | dpop (DPO-Positive: the chosen answer kept at least as likely as
  # under the reference) | simpo | orpo (reference-free, on mean log-probs per token; ORPO with
  # nll_weight=1) | nll (the NLL term alone: fine-tuning on chosen answers)
  config.loss_type = "sigmoid"
  config.simpo_gamma = 0.5  # simpo: the target margin γ in log σ(β Δ - γ)
  config.dpop_lambda = 50.0  # dpop: weight λ of max(0, log π_ref(chosen) - log π(chosen)) inside σ
  config.label_smoothing = 0.0  # sigmoid and simpo only: robust DPO / cDPO
  config.nll_weight = 0.0  # weight of a length-normalised NLL term on chosen answers (RPO; 0 = off)
  config.precompute_reference = True  # reference log-probs once over the fixed pairs; False: in each step
  config.max_length = 384  # positions per side of a pair; longer prompts are cut from the left
  config.pair_packing = (
    "auto"  # auto (shared_prompt; sides under splash) | shared_prompt | sides | none (a row per side)
  )
  config.pack_length = 0  # positions per packed row; 0 = 2 x max_length (shared_prompt) or max_length (sides)
  config.batch_size = 8  # pairs per step
  config.num_microbatches = 1  # gradient accumulation inside the step (the same update, less memory)
  config.chunk_size = 128  # positions per vocabulary-projection chunk
  config.num_steps = 50  # optimizer steps
  config.num_epochs = 0.0  # > 0: num_steps from the pairs instead, this many passes over the training pairs
  config.optimizer = optimizer.get_config()
  config.lora = lora.get_config()  # LoRA / QLoRA adapters (rank 0: every parameter trains)
  config.optimizer.learning_rate = 5e-6
  config.optimizer.warmup_steps = 5
  config.save_every = 25  # steps between checkpoints (and at the end)
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  config.eval_every = 10  # steps between held-out reward accuracies; 0 = start and end only
  config.select_checkpoint = "last"  # last | best_heldout (the evaluated step of lowest held-out loss is exported)
  # The loss whose held-out value chooses that step and stops early: "" = loss_type; another loss
  # type (its beta and NLL term the run's) where the run's own would mislead, e.g. "sigmoid" for
  # dpop, whose penalty can rise while the DPO term falls
  config.selection_loss_type = ""
  # > 0: training stops once this many held-out evaluations in a row have not lowered the held-out
  # loss (with select_checkpoint="best_heldout" and eval_every); 0 = every step is run
  config.early_stopping_patience = 0
  config.export = True  # write the refined student as an HF directory to workdir/export
  config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # axis sizes; -1 = the rest
  if variant == "tiny":
    config.limit = 16
    config.num_cot_samples = 2
    config.max_new_tokens = 32
    config.max_new_tokens_direct = 8
    config.max_length = 96
    config.batch_size = 4
    config.num_steps = 6
    config.save_every = 2
    config.eval_every = 0
    config.heldout_fraction = 0.25
    config.optimizer.warmup_steps = 0
    config.optimizer.learning_rate = 1e-4
  return config
