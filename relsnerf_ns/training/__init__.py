"""Staged training: phase A (autoencoder), B (joint NeRF fitting), C (decoder distillation).

`relsnerf_pipeline.py` routes each step to its phase's batch and loss; `phases.py` is the step schedule (the one
place that states phase lengths), `schedulers.py` the phase-aware learning rates, `relsnerf_trainer.py` nerfstudio's
trainer with the run length from the schedule, atomic checkpoints, exact resume and the non-finite-step guard.
Phase C's renders: `distill_renders.py` (made once, kept in the run folder) at `camera_interpolation.py`'s cameras.
`rng_state.py` puts random states in checkpoints.
"""
