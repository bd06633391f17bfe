"""uflow_lib: U-Flow anomaly detection (Tailanian, Pardo, Musé), as taught in the U-Flow book.

Public entry points (stable): :func:`build_uflow`, :func:`aupro`, :func:`tree_nfa`, :func:`block_nfa`,
and the command line ``python -m uflow_lib``. They are imported on first use, so ``import uflow_lib`` stays light
(no torch, no FrEIA).
"""

__version__ = "0.1.0"

_ENTRY_POINTS = {"build_uflow": "methods.uflow", "aupro": "metrics", "tree_nfa": "nfa", "block_nfa": "nfa_block"}


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        from importlib import import_module

        return getattr(import_module(f".{_ENTRY_POINTS[name]}", __name__), name)
    raise AttributeError(f"module 'uflow_lib' has no attribute {name!r}")


__all__ = ["build_uflow", "aupro", "tree_nfa", "block_nfa", "__version__"]
