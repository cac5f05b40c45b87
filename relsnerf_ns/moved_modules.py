"""The module paths of the flat layout, for `config.yml` files (and installed entry points) written before it.

A run's config.yml names its classes by module path: yaml tags such as
`!!python/object:relsnerf_ns.relsnerf_model.RelsNerfModelConfig` and `_target` names such as
`relsnerf_ns.relsnerf_model.RelsNerfModel`. Those modules now live in subpackages (`model/`, `training/`, `data/`).
`install` (run when `relsnerf_ns` is imported) lets an old path import as a module that holds everything the moved
module defines, so `ns-eval`, `ns-viewer`, `ns-render` and `--load-dir` load runs trained before the move into
today's classes (a resumed run writes the new paths). New code imports the new paths.

This table, not one stub file per old module at its old path: stub files would sit among the subpackages, and git
would not see the moves as renames (a file still exists at each old path), so changes made to the old files on other
branches would not follow the code to its new place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Dict, Optional, Sequence

MOVED_MODULES: Dict[str, str] = {
    "relsnerf_ns.relsnerf_model": "relsnerf_ns.model.relsnerf_model",
    "relsnerf_ns.relsnerf_pipeline": "relsnerf_ns.training.relsnerf_pipeline",
    "relsnerf_ns.relsnerf_trainer": "relsnerf_ns.training.relsnerf_trainer",
    "relsnerf_ns.phases": "relsnerf_ns.training.phases",
    "relsnerf_ns.schedulers": "relsnerf_ns.training.schedulers",
    "relsnerf_ns.relsnerf_datamanager": "relsnerf_ns.data.relsnerf_datamanager",
    "relsnerf_ns.llff_dataparser": "relsnerf_ns.data.llff_dataparser",
    # Commands documented as `python -m` before the move.
    "relsnerf_ns.benchmark_step": "relsnerf_ns.benchmark.step",
    "relsnerf_ns.benchmark_kernels": "relsnerf_ns.benchmark.kernels",
}
"""Old module path -> where it lives now: every module whose classes a config.yml names, and the modules that were
run as commands (`python -m relsnerf_ns.llff_dataparser --check` still works)."""


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path of `MOVED_MODULES` as a module re-exporting the names of the module at its new path."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        moved = importlib.import_module(MOVED_MODULES[module.__name__])
        for name, value in vars(moved).items():
            if not name.startswith("__"):
                setattr(module, name, value)
        module.__doc__ = f"The old path of {moved.__name__}, for config.yml files written before the subpackages."

    def get_code(self, fullname: str):
        """What `python -m OLD_PATH` runs (runpy asks the loader for code): the module at its new path, as __main__."""
        source = f"import runpy\nrunpy.run_module({MOVED_MODULES[fullname]!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname}, now {MOVED_MODULES[fullname]}>", "exec")


def install() -> None:
    """Add the finder to the import system once, first: it answers only for the old paths, and these must give the
    moved modules even where another finder could still find a file there (e.g. an editable install's mapping to a
    checkout of the flat layout)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
