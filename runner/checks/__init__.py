"""Pre-commit checks: run a spec's derivations as checks, report them, install the hook."""
