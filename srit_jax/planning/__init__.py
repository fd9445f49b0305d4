"""Planning a run before it runs: Cloud TPU slices as devices a CPU host compiles for
(`topology`), every jitted program of a config compiled ahead of time and measured against a
chip's HBM (`programs`), each compiled program's figures kept by its hash (`compiled_figures`),
and each program's time bound with the run's hours and chip-hours (`run_time`). `srit-jax plan`
(srit_jax/phases/plan.py) prints them; the training phases check the fit before any work."""
