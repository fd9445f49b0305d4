"""The self-refinement study's variants: the recipes it runs, each a set of pipeline settings
over the base (`configs/wordmath.py`), and which finished variant each starts from. Read by
studies/self_refinement.py (which runs them) and studies/study_report.py (which reports them)."""

from __future__ import annotations

import dataclasses

CONFIG = "configs/wordmath.py"

# Iterative reasoning preference optimisation (Pang et al., 2024): a correct chain over an
# incorrect one, an NLL term on the chosen chain, more chains and pairs per question, epochs over
# the pairs, and the evaluated step of lowest held-out loss kept (as the paper keeps its lowest
# validation loss).
RPO = [
  "refine.strategy=correct_vs_incorrect",
  "refine.nll_weight=1.0",
  "refine.num_cot_samples=8",
  "refine.num_direct_samples=0",
  "refine.max_pairs_per_question=8",
  "refine.num_epochs=2",
  "refine.eval_every=25",
  "refine.save_every=25",
  "refine.select_checkpoint=best_heldout",
]


# Rounds that end once 4 held-out evaluations (100 steps) have not lowered the held-out loss: the
# step kept is the one a full run keeps unless its loss would have reached a new low later (rpo
# kept step 125 of 276, its control step 25).
STOP_EARLY = ("refine.early_stopping_patience=4",)

# The paper's pairs (a correct CoT answer over a direct one, the teacher's demonstration as the
# chosen answer where the student has no correct chain) with the same NLL term, pair cap, epochs
# and checkpoint choice.
COT_VS_DIRECT_NLL = tuple(o for o in RPO if "strategy" not in o and "num_cot" not in o and "num_direct" not in o)

# Under Adam, which is nearly indifferent to the loss's scale, DPO + 10 x NLL trains as
# 0.1 x DPO + NLL: the preference at a tenth of the weight it has in cot_vs_direct_nll, between
# it (1) and the control (0), on the same pairs and steps; with the compute-matched control.
COT_VS_DIRECT_NLL_10 = (
  *(o for o in COT_VS_DIRECT_NLL if "nll_weight" not in o),
  "refine.nll_weight=10.0",
  "control=True",
)

# cot_vs_direct_nll after SFT on 100 demonstrations, its control's last step exported: after
# that SFT the control's held-out loss (the chosen answers' NLL) was flat, lowest at step 0 by
# 7e-6, so best_heldout exported the SFT student as the control. The last step matches it to SRIT
# (whose last step was its best) in steps kept as well as run.
DEMOS_100_LAST_CONTROL = (*COT_VS_DIRECT_NLL, "control=True", "demos.limit=100", "control_select_checkpoint=last")


# Instruction tuning run longer, its step chosen by held-out loss: up to 200 SFT steps (4x the
# base's 50) on the base's 400 demonstrations, evaluated every 10 on the teacher's solutions of
# the next 40 training questions (which never train), the lowest held-out loss kept, stopping
# once 5 evaluations (50 steps) have not lowered it. Every control gains 6-7 points in-domain
# over the base's SFT student: is that what more instruction tuning gives anyway?
SFT_BEST_HELDOUT = (
  "sft.num_steps=200",
  "demos.heldout_questions=40",
  "sft.eval_every=10",
  "sft.select_checkpoint=best_heldout",
  "sft.early_stopping_patience=5",
)


@dataclasses.dataclass(frozen=True)
class Variant:
  what: str
  overrides: tuple[str, ...] = ()
  parent: str = "base"  # the variant it changes one thing of (what `what` compares it with)
  second_seed_of: str = ""  # the variant it draws again with another sampling seed
  replaced_by: str = ""  # a rerun that stands for it in the recipes' verdicts (a control redone)
  diagnostic: bool = False  # its parent's students evaluated again (sampled answers): its own table, no verdict
  # (variant, stage, label): its SRIT student also paired with that variant's evaluated stage
  versus: tuple[str, str, str] = ()


VARIANTS = {
  "base": Variant("the base recipe: CoT over direct answers, beta 0.1, lr 5e-6, 20 steps of 8 pairs"),
  "rpo": Variant(
    "correct over incorrect chains + NLL (weight 1), 8 chains and up to 8 pairs per question, 2 epochs, "
    "lowest held-out loss kept; with the compute-matched control",
    (*RPO, "control=True"),
  ),
  "cot_vs_direct_nll": Variant(
    "the paper's pairs (CoT over direct) + NLL (weight 1), up to 8 pairs per question, 2 epochs, lowest held-out "
    "loss; with the compute-matched control",
    (*COT_VS_DIRECT_NLL, "control=True"),
  ),
  "cot_vs_direct_nll_seed_1": Variant(
    "cot_vs_direct_nll with another sampling and shuffling seed",
    (*COT_VS_DIRECT_NLL, "control=True", "refine.sampling_seed=1"),
    second_seed_of="cot_vs_direct_nll",
  ),
  "slip_corrected_nll": Variant(
    "pairs aimed at the calculation that went wrong: a wrong CoT answer over the student's own continuation from "
    "its first wrong step set right (reaching gold), + NLL (weight 1), up to 8 pairs per question, 2 epochs, lowest "
    "held-out loss; with the compute-matched control",
    (*COT_VS_DIRECT_NLL, "refine.strategy=slip_corrected", "control=True"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_nll_demos_100": Variant(
    "cot_vs_direct_nll after SFT on a quarter of the demonstrations (100)",
    (*COT_VS_DIRECT_NLL, "control=True", "demos.limit=100"),
    replaced_by="cot_vs_direct_nll_demos_100_last_control",
  ),
  "cot_vs_direct_nll_demos_100_last_control": Variant(  # only the control and its evaluation rerun
    "cot_vs_direct_nll_demos_100 with the control's last step exported (its held-out loss kept step 0)",
    DEMOS_100_LAST_CONTROL,
    parent="cot_vs_direct_nll_demos_100",
  ),
  "cot_vs_direct_nll_demos_100_seed_1": Variant(
    "cot_vs_direct_nll_demos_100_last_control with another sampling and shuffling seed",
    (*DEMOS_100_LAST_CONTROL, "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_demos_100_last_control",
    second_seed_of="cot_vs_direct_nll_demos_100_last_control",
  ),
  "cot_vs_direct_nll_new_questions": Variant(
    "cot_vs_direct_nll on 400 more training questions that no demonstration answers (600 in all)",
    (*COT_VS_DIRECT_NLL, "control=True", "refine.new_questions=400"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_nll_new_questions_seed_1": Variant(
    "cot_vs_direct_nll_new_questions with another sampling and shuffling seed (on cot_vs_direct_nll_seed_1's samples)",
    (*COT_VS_DIRECT_NLL, "control=True", "refine.new_questions=400", "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_seed_1",
    second_seed_of="cot_vs_direct_nll_new_questions",
  ),
  "slip_corrected_nll_seed_1": Variant(
    "slip_corrected_nll with another sampling and shuffling seed (on cot_vs_direct_nll_seed_1's samples)",
    (*COT_VS_DIRECT_NLL, "refine.strategy=slip_corrected", "control=True", "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_seed_1",
    second_seed_of="slip_corrected_nll",
  ),
  "cot_vs_direct_nll_10_seed_1": Variant(
    "cot_vs_direct_nll_seed_1 with the NLL term at weight 10 (the preference at a tenth of the NLL term's weight); "
    "with the compute-matched control",
    (*COT_VS_DIRECT_NLL_10, "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_seed_1",
    versus=("cot_vs_direct_nll_seed_1", "srit", "NLL weight 1's SRIT"),
  ),
  "cot_vs_direct_nll_10": Variant(
    "cot_vs_direct_nll_10_seed_1 drawn again with cot_vs_direct_nll's seed (its samples and pairs): the NLL term at "
    "weight 10; with the compute-matched control",
    COT_VS_DIRECT_NLL_10,
    parent="cot_vs_direct_nll",
    second_seed_of="cot_vs_direct_nll_10_seed_1",
  ),
  "lora": Variant(
    "the base recipe with LoRA (rank 16 on every projection) in SFT and DPO",
    ("sft.lora.rank=16", "sft.optimizer.learning_rate=1e-3", "refine.optimizer.learning_rate=5e-5"),
  ),
  "rpo_3_rounds": Variant(
    "rpo iterated: 3 rounds, each sampling from the last round's student, which is its reference; with the "
    "compute-matched control iterated alike (each round cross-entropy on its own correct chains); each round "
    "of either stops once 4 held-out evaluations (100 steps) have not lowered its held-out loss",
    (*RPO, *STOP_EARLY, "refine_iterations=3", "refine_reference=previous", "eval_rounds=True", "control=True"),
    parent="rpo",
  ),
  "rpo_3_rounds_sft_reference": Variant(
    "rpo iterated: 3 rounds, the reference fixed at the SFT student; stopping early as rpo_3_rounds",
    (*RPO, *STOP_EARLY, "refine_iterations=3", "refine_reference=sft", "eval_rounds=True"),
    parent="rpo_3_rounds",
    versus=("rpo_3_rounds", "srit", "rpo_3_rounds' SRIT"),
  ),
  "rpo_dpop": Variant(
    "rpo with DPO-Positive's penalty (lambda 50) where a chosen chain falls below the reference: in rpo_3_rounds "
    "the chosen chains' likelihood fell each round while the margin grew; stopping early as rpo_3_rounds; its "
    "control is rpo_3_rounds' first control round (the same pairs and steps)",
    (*RPO, *STOP_EARLY, "refine.loss_type=dpop", "control=True"),
    parent="rpo_3_rounds",
    versus=("rpo_3_rounds", "srit_round_1", "rpo's SRIT"),
  ),
  "rpo_dpop_dpo_selection": Variant(
    "rpo_dpop with its step chosen (and its early stop decided) by the held-out DPO + NLL loss, DPOP's penalty "
    "left out: rpo's own criterion. rpo_dpop's held-out DPOP loss rose from step 0, so it kept the SFT student",
    (*RPO, *STOP_EARLY, "refine.loss_type=dpop", "refine.selection_loss_type=sigmoid", "control=True"),
    parent="rpo_dpop",
    versus=("rpo_3_rounds", "srit_round_1", "rpo's SRIT"),
  ),
  "sft_best_heldout": Variant(
    "cot_vs_direct_nll with its control after SFT run up to 200 steps on the same 400 demonstrations, the step of "
    "lowest held-out loss kept (on the solutions of 40 more training questions, evaluated every 10 steps, stopping "
    "after 5 evaluations without a new low)",
    (*SFT_BEST_HELDOUT, *COT_VS_DIRECT_NLL, "control=True"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_orpo": Variant(
    "cot_vs_direct_nll's pairs, steps and NLL term with ORPO's reference-free odds-ratio term (weight 0.1, as in "
    "ORPO) in place of DPO's; with the compute-matched control",
    (*COT_VS_DIRECT_NLL, "refine.loss_type=orpo", "refine.beta=0.1", "control=True"),
    parent="cot_vs_direct_nll",
    versus=("cot_vs_direct_nll", "srit", "DPO's SRIT"),
  ),
  "rpo_orpo": Variant(
    "rpo's pairs and NLL term with ORPO's odds-ratio term (weight 0.1) in place of DPO's: on cot_vs_direct pairs the "
    "odds ratio starts saturated (the direct answers already improbable) and hardly trains; here both sides are "
    "the student's own samples; stopping early as rpo_3_rounds; its control is rpo_dpop's (rpo_3_rounds' first "
    "control round), taken from rpo_dpop_dpo_selection where that has trained it",
    (*RPO, *STOP_EARLY, "refine.loss_type=orpo", "refine.beta=0.1", "control=True"),
    parent="rpo_dpop_dpo_selection",
    versus=("rpo_3_rounds", "srit_round_1", "rpo's SRIT"),
  ),
  "cot_vs_direct_nll_sampled": Variant(
    "cot_vs_direct_nll's SFT, SRIT and control students answering the first 300 in-domain test questions 8 times "
    "each by sampling (temperature 0.7): pass@1, pass@8 and the majority vote, the votes paired; does the "
    "preference narrow what the student can reach (pass@8) where the control's cross-entropy does not?",
    (*COT_VS_DIRECT_NLL, "control=True", "eval.limit=300", "eval.sampled_answers=8", "out_domain_tasks="),
    parent="cot_vs_direct_nll",
    diagnostic=True,
  ),
  "rpo_new_questions": Variant(
    "rpo on 400 more training questions that no demonstration answers (600 in all)",
    (*RPO, "refine.new_questions=400"),
    parent="rpo",
  ),
  "rpo_demos_100": Variant("rpo after SFT on a quarter of the demonstrations (100)", (*RPO, "demos.limit=100")),
  "correct_vs_incorrect": Variant(
    "pairs: a correct CoT answer over an incorrect one (20 steps)", ("refine.strategy=correct_vs_incorrect",)
  ),
  "rpo_seed_1": Variant(
    "rpo with another sampling and shuffling seed, with its control",
    (*RPO, "control=True", "refine.sampling_seed=1"),
    second_seed_of="rpo",
  ),
}

# The settings the phases every variant shares (demonstrations, SFT, its evaluation) depend on:
# variants that override none of them differently share those phases whichever ran first.
SHARED_SETTINGS = ("student", "seed=", "train_task", "in_domain_tasks", "out_domain_tasks", "demos.", "sft.", "eval.")


def shared_settings(name: str) -> list[str]:
  """The variant's overrides that the shared phases (demonstrations, SFT, its evaluation) depend on."""
  return sorted(o for o in VARIANTS[name].overrides if o.startswith(SHARED_SETTINGS))
