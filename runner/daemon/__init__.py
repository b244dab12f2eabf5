"""`runner daemon`: the store served over Nix's worker protocol (docs/daemon.md)."""
