"""Rendering paths below the model: rays, the fast inference path, fused hash-grid kernels, out-of-memory fallbacks.

`latent_rays.py` makes one ray per 8x8 pixel block; `fast_render.py` renders a frame's latent map as one bundle
(CUDA graphs, float16 decoder); `hash_grid_kernel.py` has the Triton hash-grid lookups used on GPUs without
tinycudann; `out_of_memory.py` shrinks ray chunks and decodes in tiles when the GPU runs out of memory. Nothing here
imports the model.
"""
