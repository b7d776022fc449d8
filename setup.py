"""Builds the `unlearnx._C` extension.

CUDA kernels are built when torch has CUDA and nvcc is found; ``UNLEARNX_CUDA=1`` forces
them (failing loudly if impossible), ``UNLEARNX_CUDA=0`` builds the CPU kernels only.
Without a GPU to query, the CUDA architectures default to A100 and H100/H200 plus PTX
(``TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX"``); set ``TORCH_CUDA_ARCH_LIST`` to override.
"""

import glob
import importlib.util
import os
import platform

# torch derives CUDA_HOME from the first nvcc on PATH, which may be a wrapper script
# outside the toolkit (then libcudart is not found at link time); prefer the standard
# toolkit location when the user has not named one.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists(
    "/usr/local/cuda/bin/nvcc"
):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from setuptools import setup
from torch.utils import cpp_extension

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
ROOT = os.path.dirname(os.path.abspath(__file__))


def toolchain_checks():
    """unlearnx/_toolchain.py, loaded by path: the package itself needs the extension."""
    spec = importlib.util.spec_from_file_location(
        "_unlearnx_toolchain", os.path.join(ROOT, "unlearnx", "_toolchain.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wanted(variable: str, available: bool, missing: str) -> bool:
    """An ``auto|0|1`` build switch: auto builds the part where ``available``, 1 requires it
    (failing with ``missing`` where it is not), 0 leaves it out."""
    flag = os.environ.get(variable, "auto").lower()
    if flag not in {"auto", "0", "1"}:
        raise SystemExit(f"{variable} must be auto, 0 or 1, got {flag!r}")
    if flag == "1" and not available:
        raise SystemExit(f"{variable}=1 but {missing}")
    return flag == "1" or (flag == "auto" and available)


def want_cuda() -> bool:
    available = cpp_extension.CUDA_HOME is not None and cpp_extension.torch.version.cuda is not None
    return wanted("UNLEARNX_CUDA", available, "torch has no CUDA or nvcc (CUDA_HOME) was not found")


def want_simt() -> bool:
    """The SIMT emulation of the CUDA kernels (csrc/simt; its fiber switch is x86-64 assembly)."""
    available = platform.system() == "Linux" and platform.machine() in {"x86_64", "AMD64"}
    return wanted("UNLEARNX_SIMT", available, f"the SIMT shim needs x86-64 Linux, not {platform.platform()}")


def extension():
    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    # headers count as inputs, so a header-only change rebuilds the extension
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True))
    # -fno-trapping-math: FP exceptions are never unmasked, so gcc may if-convert the clamps of
    # the vectorised exp (row_math.h); without it the AVX2 and SSE2 row loops stay scalar.
    # -fopenmp: at::parallel_for is a header template that runs serially unless the extension
    # itself is built with OpenMP (measured: the row kernels used one core of two without it);
    # libgomp.so.1 resolves to the copy torch has already loaded, so there is one thread pool.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    if want_simt():
        sources += sorted(glob.glob("csrc/simt/*.cpp"))
        cxx.append("-DUNLEARNX_WITH_SIMT")
    if not want_cuda():
        return cpp_extension.CppExtension(
            "unlearnx._C",
            sources,
            include_dirs=include_dirs,
            depends=depends,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    defines = ["-DUNLEARNX_WITH_CUDA", f'-DUNLEARNX_CUDA_ARCHS="{archs}"']
    return cpp_extension.CUDAExtension(
        "unlearnx._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=include_dirs,
        depends=depends,
        extra_compile_args={
            "cxx": cxx + defines,
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", *defines],
        },
        extra_link_args=["-fopenmp"],
    )


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's build, refusing an extension that carries its own libstdc++ (see _toolchain.py)."""

    def build_extension(self, ext) -> None:
        super().build_extension(ext)
        path = self.get_ext_fullpath(ext.name)
        checks = toolchain_checks()
        if checks.private_libstdcxx(path):
            os.remove(path)  # so that the next build does not take it as up to date
            linker = getattr(self.compiler, "linker_so_cxx", self.compiler.linker_so)
            raise SystemExit(checks.static_libstdcxx_error(path, " ".join(linker)))


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
