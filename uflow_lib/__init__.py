"""uflow_lib: U-Flow anomaly detection (Tailanian, Pardo, Musé), as taught in the U-Flow book.

Public entry points (stable): :func:`build_uflow`, :func:`aupro`, :func:`tree_nfa`, :func:`block_nfa`,
and the command line ``python -m uflow_lib``.
"""

from .flow import build_uflow

__version__ = "0.1.0"


def __getattr__(name):  # lazy imports keep `import uflow_lib` light
    if name == "aupro":
        from .metrics import aupro

        return aupro
    if name in ("tree_nfa", "block_nfa"):
        from . import nfa

        return getattr(nfa, name)
    raise AttributeError(f"module 'uflow_lib' has no attribute {name!r}")


__all__ = ["build_uflow", "aupro", "tree_nfa", "block_nfa", "__version__"]
