"""ReLS-NeRF as a nerfstudio method plugin; `relsnerf_config.py` registers the methods (see the README's "How the
code is organised")."""

from relsnerf_ns.moved_modules import install as _install_moved_modules

_install_moved_modules()
