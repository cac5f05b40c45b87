"""Data: the datamanager of the three phases, robust image reading, the LLFF dataparser, atomic file writes.

`relsnerf_datamanager.py` draws colour rays, latent patches, autoencoder crops and sparse-depth rays;
`image_files.py` reads any common image format with clear errors; `llff_dataparser.py` is the `llff-data`
dataparser (LLFF scenes with DS-NeRF sparse depth, usable by any nerfstudio method); `metadata_keys.py` names the
metadata they share; `atomic_files.py` writes files that a crash never leaves half-written.
"""
