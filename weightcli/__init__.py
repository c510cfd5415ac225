"""weightcli: weight surgery on saved TensorFlow/Keras models.

The Python API (``weightcli.open``, ``inspect``, ``scale``, ``clip``, ``quantize``,
``apply``, ``diff``, ``verify``, ``transplant``, ``merge``, ``assign`` (``set``), ``dump``,
``reinit``, ``freeze``) lives in ``weightcli.api`` and is reachable from here;
it is imported on first use, so ``weightcli --version`` stays instant.
"""

from __future__ import annotations

from typing import Any

from weightcli.version import __version__

__all__ = ["__version__"]

_API = {
    "Checkpoint",
    "open",
    "inspect",
    "scale",
    "clip",
    "quantize",
    "apply",
    "diff",
    "verify",
    "selection",
    "transplant",
    "merge",
    "assign",
    "dump",
    "reinit",
    "freeze",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        from weightcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'weightcli' has no attribute {name!r}")
