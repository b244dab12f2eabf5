"""runner: a declarative pipeline runner with a Nix-compatible store."""

__version__ = "0.1.0"
