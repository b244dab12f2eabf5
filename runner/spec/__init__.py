"""YAML specs: load and check them, translate them into store derivations.

The names below are imported on first use (PEP 562), so importing one small
module of this package (`runner.spec.graph`, say) does not load the schema
validator and the YAML machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.spec.load import load_spec
    from runner.spec.model import DerivationEntry, InputEntry, Spec, SubstituterEntry
    from runner.spec.translate import Instantiated, instantiate, source_paths, translate

_WHERE = {
    "load_spec": "runner.spec.load",
    "DerivationEntry": "runner.spec.model",
    "InputEntry": "runner.spec.model",
    "Spec": "runner.spec.model",
    "SubstituterEntry": "runner.spec.model",
    "Instantiated": "runner.spec.translate",
    "instantiate": "runner.spec.translate",
    "source_paths": "runner.spec.translate",
    "translate": "runner.spec.translate",
}

__all__ = [
    "DerivationEntry",
    "InputEntry",
    "Instantiated",
    "Spec",
    "SubstituterEntry",
    "instantiate",
    "load_spec",
    "source_paths",
    "translate",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'runner.spec' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name]), name)
