"""`relsnerf-bench`: nerfacto against ReLS-NeRF on one scene (the paper's Tables 1 and 2). The method never imports
this package.

`cli.py` is the command (training, evaluation, timing, reports); `models.py` the compared models and their training
configs, `train.py` their timed training, `evaluate.py` quality, RCC and render times, `spiral.py` the LLFF spiral
video, `report.py` the result records and report writers; `step.py` profiles a training step and `kernels.py` times
the hash-grid kernels and every inference variant.
"""


def main(argv=None) -> None:
    """The `relsnerf-bench` command (`cli.main`), imported when called."""
    from relsnerf_ns.benchmark.cli import main as cli_main

    cli_main(argv)
