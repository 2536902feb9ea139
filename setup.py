"""Build of cmrsdk's native core: one pybind11 C++ module and one Cython module.

Compiler flags
--------------
- ``-O3`` always; OpenMP is not used: the kernels split work over ``std::thread``s themselves,
  so the wheel has no libgomp dependency and the thread count is a plain argument.
- Vector units: by default the code is compiled for the baseline of the architecture
  (x86-64 SSE2, aarch64 NEON), which every machine that can run the wheel has.
  ``CMRSDK_NATIVE=1`` adds ``-march=native`` for a local build tuned to this CPU (not for
  wheels that travel).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from Cython.Build import cythonize
from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, setup

native = os.environ.get("CMRSDK_NATIVE", "0") == "1"
cflags = ["-O3", "-fno-math-errno", "-fvisibility=hidden"]
if native:
    cflags.append("-march=native")
if sys.platform == "darwin":
    cflags.append("-mmacosx-version-min=10.15")

ext_native = Pybind11Extension(
    "cmrsdk._native",
    sorted(os.path.join("csrc", "native", f) for f in os.listdir(os.path.join("csrc", "native")) if f.endswith(".cpp")),
    include_dirs=[os.path.join("csrc", "native")],
    cxx_std=17,
    extra_compile_args=cflags,
)

ext_normalize = Extension(
    "cmrsdk._normalize",
    ["csrc/normalize.pyx"],
    include_dirs=[np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=cflags,
    language="c++",
)

setup(
    ext_modules=[ext_native, *cythonize([ext_normalize], language_level=3, annotate=False)],
)
