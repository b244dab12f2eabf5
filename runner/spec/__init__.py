"""YAML specs: load and check them, translate them into store derivations."""

from runner.spec.load import load_spec
from runner.spec.model import DerivationEntry, InputEntry, Spec, SubstituterEntry
from runner.spec.translate import Instantiated, instantiate, source_paths, translate

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
