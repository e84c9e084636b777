"""The optional compiled masker and assembler (``spoc_sockets._speedups``); everything
else is in pyproject.toml.

It is built when a C compiler is there; when the build fails, the package installs
without it and uses its pure-Python twins. ``SPOC_SOCKETS_NO_SPEEDUPS=1`` skips it (and,
set at run time, leaves a built one unused).
"""

import os

from setuptools import Extension, setup

SPEEDUPS = Extension("spoc_sockets._speedups", ["spoc_sockets/_speedups.c"], optional=True)

setup(ext_modules=[] if os.environ.get("SPOC_SOCKETS_NO_SPEEDUPS") == "1" else [SPEEDUPS])
