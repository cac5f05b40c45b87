"""Held-out evaluation: one loop for `ns-eval` and the benchmark, offline image metrics, RCC, honest timing.

`held_out.py` renders every evaluation view with every output, each render timed; `image_metrics.py` computes
PSNR, SSIM, FLIP and (from cached weights) LPIPS; `rcc.py` is the paper's reprojective colour consistency;
`render_timing.py` times renders with the device synchronised.
"""
