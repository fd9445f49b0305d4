"""The phases a user runs (demos, sft, refine, eval, pipeline, generate, complete, plan)."""
