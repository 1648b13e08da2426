"""Build of the two extension modules:

- overfeat_kernels._C: the CPU kernels and, whenever a CUDA toolkit is found, the CUDA
  kernels too (a GPU is not needed to compile them);
- overfeat_kernels._sim: the same CUDA sources (csrc/cuda) compiled with the host C++
  compiler against the CUDA simulator (csrc/sim), always built: it runs the CUDA kernels
  on CPU tensors, which is how they are tested on machines without a GPU.

    pip install --no-build-isolation -e .

Environment:
    CUDA_HOME / CUDA_PATH      the CUDA toolkit (found from `nvcc` when unset)
    TORCH_CUDA_ARCH_LIST       GPU architectures (default "8.0;9.0a": A100 and H100 class;
                               the Hopper conv kernel needs 9.0a, sm_90a's wgmma)
    MAX_JOBS                   parallel compile jobs (ninja)
    OVERFEAT_KERNELS_CPU_ONLY  set to 1 to skip nvcc even with a toolkit (the simulator
                               module is still built)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0a"


def _say(msg: str) -> None:
    print(f"[overfeat_kernels build] {msg}", file=sys.stderr, flush=True)


def _toolkit_at(home: Path) -> bool:
    return (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> str | None:
    """The CUDA toolkit's root, or None.

    torch guesses CUDA_HOME as two folders above `which nvcc`, which is wrong when `nvcc`
    on PATH is a wrapper script (then linking fails with `cannot find -lcudart`). So we ask
    the compiler itself where it lives (`nvcc --dryrun` prints `_HERE_=<its bin folder>`).
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            proc = subprocess.run(
                [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                capture_output=True,
                text=True,
                timeout=120,
            )
            for line in (proc.stdout + proc.stderr).splitlines():
                if "_HERE_=" in line:
                    home = Path(line.split("_HERE_=", 1)[1].strip()).resolve().parent
                    if _toolkit_at(home):
                        return str(home)
        except (OSError, subprocess.SubprocessError):
            pass
        home = Path(nvcc).resolve().parent.parent
        if _toolkit_at(home):
            return str(home)
    for cand in ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]:
        if _toolkit_at(Path(cand)):
            return cand
    return None


# The simulator's translation units that hold kernels (the twins of csrc/cuda/*.cu and the
# self-test kernels) are compiled with the compiler's thread-sanitizer instrumentation: it
# calls __tsan_read4(addr)-style hooks before every load and store, which the simulator's
# race detector (csrc/sim/race_detector.cpp, compiled without it) defines; libtsan is never
# linked. Function entry/exit hooks are not needed; tail calls would hide the caller's line.
SIM_INSTRUMENT = [
    "-fsanitize=thread",
    "--param=tsan-instrument-func-entry-exit=0",
    "-fno-optimize-sibling-calls",
    "-g",
]
SIM_RUNTIME = {"fiber", "guarded_allocator", "module", "race_detector", "runtime", "tma_model",
               "wgmma_model", "conv_choice"}  # fmt: skip


def _is_instrumented(source: str) -> bool:
    path = Path(source)
    return path.parent.name == "sim" and path.stem not in SIM_RUNTIME


def _build_ext_class(base):
    """BuildExtension that compiles the simulator's kernel sources with SIM_INSTRUMENT.

    One extension gets one set of flags from setuptools, so the compile step is split in
    two (both through torch's ninja path); the instrumented objects come first on the link
    line, so that inline functions shared with the runtime keep their instrumented copy.
    """

    class BuildExt(base):
        def build_extension(self, ext):
            if not getattr(ext, "instrument_kernels", False):
                return super().build_extension(ext)
            compile_all = self.compiler.compile

            def compile_split(sources, *args, extra_postargs=None, **kwargs):
                kernels = [s for s in sources if _is_instrumented(s)]
                rest = [s for s in sources if not _is_instrumented(s)]
                post = (
                    dict(extra_postargs)
                    if isinstance(extra_postargs, dict)
                    else {"cxx": list(extra_postargs or [])}
                )
                objects = []
                if kernels:
                    # A folder of its own: torch writes one build.ninja (and ninja one deps
                    # log) per output folder, so each half keeps its own.
                    flags = {**post, "cxx": [*post["cxx"], *SIM_INSTRUMENT]}
                    own = dict(kwargs)
                    if own.get("output_dir"):
                        own["output_dir"] = os.path.join(own["output_dir"], "instrumented")
                    objects += compile_all(kernels, *args, extra_postargs=flags, **own)
                if rest:
                    objects += compile_all(rest, *args, extra_postargs=post, **kwargs)
                return objects

            self.compiler.compile = compile_split
            try:
                return super().build_extension(ext)
            finally:
                self.compiler.compile = compile_all

    return BuildExt


def _extensions():
    cpu_only = os.environ.get("OVERFEAT_KERNELS_CPU_ONLY", "") not in ("", "0")
    cuda_home = None if cpu_only else find_cuda_home()
    if cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads it once.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import (
        BuildExtension,
        CppExtension,
        CUDAExtension,
        is_ninja_available,
    )

    if not is_ninja_available():
        raise SystemExit("overfeat_kernels needs ninja to build: `pip install ninja`, then retry.")

    with_cuda = bool(cuda_home) and torch.version.cuda is not None
    sources = [
        "csrc/ops.cpp",
        "csrc/python_module.cpp",
        "csrc/conv_choice.cpp",
        *sorted(glob.glob("csrc/autograd/*.cpp", root_dir=ROOT)),
        *sorted(glob.glob("csrc/autocast/*.cpp", root_dir=ROOT)),
        *sorted(glob.glob("csrc/cpu/*.cpp", root_dir=ROOT)),
    ]
    # at::parallel_for is a header template: compiled without OpenMP it runs every chunk on
    # the calling thread. With -fopenmp the kernels use torch's thread count, and the
    # libgomp.so.1 torch has already loaded.
    openmp = ["-fopenmp"] if torch._C.has_openmp and sys.platform.startswith("linux") else []
    # C++20 named: older torch builds default their extensions to C++17 (std::bit_cast is 20).
    # _FORTIFY_SOURCE=3 everywhere, as Ubuntu's compilers default to it, so that its
    # checks fire in our tests rather than first on a user's machine.
    fortify = ["-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=3"]
    cxx_flags = ["-O3", "-std=c++20", *fortify, "-fdiagnostics-color=always", *openmp]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        sources += sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))
        archs = os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";")
        macros = [("OVERFEAT_WITH_CUDA", "1")]
        # sm_90a's code (wgmma, setmaxnreg) is in the build: the plan may pick it on 9.0.
        if any(a.split("+")[0] == "9.0a" for a in archs):
            macros.append(("OVERFEAT_HAS_SM90A", "1"))
        ext = CUDAExtension(
            "overfeat_kernels._C",
            sources,
            define_macros=macros,
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-lineinfo", "-Xptxas=-warn-spills"],
            },
            extra_link_args=openmp,
        )
        _say(f"CUDA toolkit: {cuda_home} (torch built for CUDA {torch.version.cuda})")
        _say(f"GPU architectures (TORCH_CUDA_ARCH_LIST): {os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        if cpu_only:
            why = "OVERFEAT_KERNELS_CPU_ONLY is set"
        elif not cuda_home:
            why = "no CUDA toolkit was found (set CUDA_HOME or put nvcc on PATH)"
        else:
            why = f"torch {torch.__version__} is a CPU-only build"
        bar = "!" * 78
        _say(
            f"\n{bar}\n  BUILDING THE CPU KERNELS ONLY: {why}.\n"
            f"  The ops will raise on CUDA tensors. See README, 'Building for a GPU'.\n{bar}"
        )
        ext = CppExtension(
            "overfeat_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=openmp,
        )
    _say(f"sources: {', '.join(sources)}")
    sim_sources = sorted(glob.glob("csrc/sim/*.cpp", root_dir=ROOT))
    # Each CUDA source is compiled into the simulator through a one-line csrc/sim/<stem>.cpp.
    missing = [
        cu
        for cu in sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))
        if f"csrc/sim/{Path(cu).stem}.cpp" not in sim_sources
    ]
    if missing:
        raise SystemExit(
            f"overfeat_kernels: {', '.join(missing)} has no simulator twin: add "
            f'csrc/sim/<stem>.cpp containing `#include "../cuda/<stem>.cu"`'
        )
    sim = CppExtension(
        "overfeat_kernels._sim",
        sim_sources,
        define_macros=[("OVERFEAT_SIM", "1")],
        # The simulator reads the kernels' __shared__ variables from the module's symbol
        # table: never strip it.
        # OpenMP as for _C: a launch's blocks run on torch's threads (at::parallel_for).
        extra_compile_args={
            "cxx": ["-O2", "-std=c++20", *fortify, "-fdiagnostics-color=always", *openmp]
        },
        extra_link_args=["-ldl", *openmp],
    )
    sim.instrument_kernels = True
    instrumented = ", ".join(s for s in sim_sources if _is_instrumented(s))
    _say(f"instrumented for the race detector: {instrumented}")
    _say(f"simulator sources: {', '.join(sim_sources)}")
    _say(f"parallel jobs (MAX_JOBS): {os.environ.get('MAX_JOBS', 'ninja default')}")
    return [ext, sim], {"build_ext": _build_ext_class(BuildExtension).with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["overfeat_kernels", "overfeat_kernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
