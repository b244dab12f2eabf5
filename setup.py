"""The one compiled part: the sandbox's spawn (runner/sandbox/_spawn.c).

Optional: without a C compiler the package installs without it, and
sandboxed builds start through the Python fork server instead (slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("runner.sandbox._spawn", ["runner/sandbox/_spawn.c"],
                             optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra"])])
