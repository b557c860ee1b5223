"""The one compiled part: seqmnist's LSTM kernel (plain C, AVX-512). It is optional: where it
cannot be built (no C compiler, another CPU architecture) the package installs without it and
the LSTM models use PyTorch's nn.LSTM. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("seqmnist._lstm", ["src/seqmnist/csrc/lstm.c"],
                             extra_compile_args=["-O3"], libraries=["m"],
                             optional=True)])
