"""A tiny package for the python-package example spec."""


def greet(name: str) -> str:
    return f"Hello, {name}!"
