"""Build of tbptt_ext: CPU kernels always, CUDA kernels when possible.

TBPTT_EXT_BUILD_CUDA: unset = build the CUDA sources when torch is a CUDA build
and nvcc is found (CUDA_HOME, else /usr/local/cuda, else nvcc on PATH); "0" =
CPU only; "1" = CUDA or a clear error. No GPU is needed to build: without one and
without TORCH_CUDA_ARCH_LIST the kernels are built for sm_80 and sm_90.
MAX_JOBS limits parallel compile jobs (ninja).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


# What csrc/cuda/cuda_ops.cpp includes for cuBLAS (through ATen/cuda/CUDAContext.h).
CUBLAS_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


def find_cublas(cuda_home, cuda_major):
    """(compile flags, link flags) for cuBLAS, which the CUDA backend calls directly
    (csrc/cuda/cuda_ops.cpp), or None. Headers: CUDA_HOME's, else those of the NVIDIA
    pip packages torch's CUDA build installs (nvidia/<name>/include), searched after every
    other include directory so that CUDA_HOME's runtime headers stay in front. Library:
    CUDA_HOME's libcublas.so, else the pip package's libcublas.so.<torch's CUDA major>
    (the one torch loads, so that one copy of cuBLAS serves both)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    pip_roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    pip_includes = sorted(d for root in pip_roots for d in glob.glob(os.path.join(root, "*", "include")))
    compile_flags = [flag for d in pip_includes for flag in ("-idirafter", d)]
    headers = [os.path.join(cuda_home, "include")] + pip_includes
    if not all(any(os.path.exists(os.path.join(d, h)) for d in headers) for h in CUBLAS_HEADERS):
        return None
    for lib_dir in (os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib")):
        if os.path.exists(os.path.join(lib_dir, "libcublas.so")):
            return compile_flags, [f"-L{lib_dir}", "-lcublas"]
    for root in pip_roots:
        libs = sorted(glob.glob(os.path.join(root, "*", "lib", f"libcublas.so.{cuda_major}")))
        if libs:
            lib_dir, name = os.path.split(libs[0])
            return compile_flags, [f"-L{lib_dir}", f"-l:{name}", f"-Wl,-rpath,{lib_dir}"]
    return None


def want_cuda():
    import torch

    flag = os.environ.get("TBPTT_EXT_BUILD_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        sys.exit(f"TBPTT_EXT_BUILD_CUDA must be 0, 1 or unset, got {flag!r}")
    if flag == "0":
        return False, None, None
    cuda_home = find_cuda_home()
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"the installed torch {torch.__version__} is not a CUDA build")
    if cuda_home is None:
        reasons.append("nvcc was not found (set CUDA_HOME, or install it at /usr/local/cuda or on PATH)")
    cublas = None
    if cuda_home and torch.version.cuda:
        cublas = find_cublas(cuda_home, torch.version.cuda.split(".")[0])
        if cublas is None:
            reasons.append(f"cuBLAS was not found ({', '.join(CUBLAS_HEADERS)} and libcublas in {cuda_home} "
                           f"or in torch's nvidia packages)")
    if reasons:
        if flag == "1":
            sys.exit("TBPTT_EXT_BUILD_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(reasons))
        print("tbptt_ext: not building the CUDA kernels: " + "; ".join(reasons), flush=True)
        return False, None, None
    return True, cuda_home, cublas


def extensions():
    use_cuda, cuda_home, cublas = want_cuda()
    if use_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    # -fno-trapping-math lets the pointwise loops if-convert and vectorise; -fno-wrapv
    # undoes Python's -fwrapv, which blocks vectorisation of indexed loops.
    # -fopenmp: at::parallel_for is a header template that is only parallel when the
    # extension itself is compiled with OpenMP (torch's CPU build uses it).
    # (Apple's clang has no -fopenmp: there the kernels run single-threaded.)
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-wrapv", "-ffp-contract=fast", *openmp]
    link_flags = openmp
    sources = [os.path.relpath(p, ROOT) for p in ["csrc/register.cpp", *sorted(glob.glob(f"{ROOT}/csrc/cpu/*.cpp"))]]
    if not use_cuda:
        print("tbptt_ext: building the CPU kernels only", flush=True)
        return [
            CppExtension("tbptt_ext._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
        ]
    cuda_sources = sorted(
        os.path.relpath(p, ROOT)
        for pattern in ("csrc/cuda/*.cu", "csrc/cuda/*.cpp")
        for p in glob.glob(f"{ROOT}/{pattern}")
    )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    print(
        f"tbptt_ext: building CPU and CUDA kernels with {cuda_home} for "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(visible GPUs)')}",
        flush=True,
    )
    return [
        CUDAExtension(
            "tbptt_ext._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + cublas[0], "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=link_flags + cublas[1],
        )
    ]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    name="tbptt_ext",
    version="0.1.0",
    description="Fused RNN/LSTM/GRU chunk kernels for truncated backpropagation through time",
    packages=find_packages(include=["tbptt_ext", "tbptt_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
    python_requires=">=3.9",
    install_requires=["torch"],
    extras_require={"test": ["pytest"], "bench": ["matplotlib"], "examples": ["tqdm"]},
    # The main job as a command: unlike `python -m`, a console script does not put the
    # current directory first on sys.path, so it finds the installed, compiled package
    # even when started from the source tree.
    entry_points={"console_scripts": ["tbptt-char-lm = tbptt_ext.examples.char_lm:main",
                                     "tbptt-probe = tbptt_ext.examples.probe:main"]},
)
