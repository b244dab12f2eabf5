"""`runner why` and `runner diff`: build history and derivation comparison."""
