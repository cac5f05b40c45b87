"""The ReLS-NeRF model: nerfacto's colour NeRF plus a latent field, rendered at 1/8 resolution and decoded.

Start reading at `relsnerf_model.py` (`RelsNerfModel`: training steps of the three phases, the decoded and the
per-pixel rendering paths, evaluation metrics); `relsnerf_field.py` adds the latent branch to nerfacto's field,
`offline_nerfacto.py` builds nerfacto's modules without its LPIPS download, `latent_targets.py` holds the encoder's
latents that supervise the latent field, `decoder_guidance.py` the adapter through which the decoder also sees the
latent rays' colour and depth, `compiled_fields.py` compiles the fields' sample evaluations for
training (an option), `train_batches.py` the batch of each phase, `viewer_controls.py` what the
model adds to nerfstudio's viewer.
"""
