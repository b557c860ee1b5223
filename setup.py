"""The one compiled part: seqmnist's LSTM kernel (``src/seqmnist/kernels/csrc/lstm.c``), plain C
built as a plain shared library, ``seqmnist/kernels/libseqmnist_lstm.so``, which
``kernels/lstm_kernel.py`` loads with ctypes. It is not a Python extension module (it has no
``PyInit_`` function and cannot be imported), so it is built without Python's ABI tag. It is optional: where it cannot be built (no C
compiler, a CPU other than x86-64) the package installs without it, says so, and trains with the
``torch`` backend; ``seqmnist doctor`` reports what was built. Everything else is in pyproject.toml.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIBRARY = "seqmnist.kernels.libseqmnist_lstm"


class BuildSharedLibrary(build_ext):
    """build_ext for a plain C shared library: no Python ABI tag in its name, no PyInit_ export,
    and a failed build is a loud warning rather than a failed install."""

    def get_ext_filename(self, fullname):
        # called with the full dotted name and, by distutils, with its last part alone
        if fullname in (LIBRARY, LIBRARY.rsplit(".", 1)[1]):
            return fullname.replace(".", "/") + (".dylib" if sys.platform == "darwin" else ".so")
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        return [] if ext.name == LIBRARY else super().get_export_symbols(ext)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: install without it
            bar = "=" * 78
            sys.stderr.write(
                f"\n{bar}\nWARNING: seqmnist's LSTM kernel was not built ({exc}).\n"
                "seqmnist installs and trains with the torch backend (nn.LSTM) instead.\n"
                "To build the kernel: install a C compiler (gcc or clang) on an x86-64 machine\n"
                "and reinstall. `seqmnist doctor` shows what is available.\n"
                f"{bar}\n\n")


setup(
    ext_modules=[Extension(LIBRARY, ["src/seqmnist/kernels/csrc/lstm.c"],
                           depends=["src/seqmnist/kernels/csrc/lstm_simd.h"],
                           extra_compile_args=["-O3"], libraries=["m"])],
    cmdclass={"build_ext": BuildSharedLibrary},
)
