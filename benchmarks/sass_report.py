"""Static performance report of the CUDA kernels, read from their SASS (no GPU needed).

For every kernel of nvcc-built objects (sm_80 and sm_90a): registers per thread (and the
counts setmaxnreg moves its warpgroups to), spill bytes, shared memory, the theoretical
occupancy that follows on an H100, and the instruction mix of the hottest loop: the
innermost loop (a backward branch) that holds HMMA or HGMMA (wgmma), counted as HMMA,
HGMMA, LDSM, LDGSTS, UTMALDG (TMA loads), SYNCS (mbarrier operations), BAR and the rest;
for warp-specialised kernels also the producer's loop (the innermost one holding UTMALDG);
and, for the memory-bound kernels
(offset pooling, interleave), the width of every global load and store (128-bit LDG.E.128 /
STG.E.128 against narrower ones). Evidence of design, never speed.

Usage:
    python benchmarks/sass_report.py --build               # nvcc csrc/cuda/*.cu, sm_80 + sm_90a
                                                           # (its warnings: "build_warnings")
    python benchmarks/sass_report.py --object sm_90=x.o    # an object built elsewhere
    options: --json PATH (default benchmarks/results/sass_report.json), --cuobjdump PATH

Definitions:
- spill bytes: the bytes stored by STL (local-memory stores) in the kernel's SASS, which is
  what ptxas's "bytes spill stores" counts for kernels without local arrays (none here).
- occupancy (H100, compute capability 9.0): blocks per SM = min(32, 2048 / threads,
  registers: floor(65536 / (ceil(regs · 32 / 256) · 256) / warps), shared memory:
  floor(233472 / shared)); shared memory as cuobjdump reports it (sm_90 includes the 1 KB
  the system reserves per block). Threads per block come from __launch_bounds__
  (EIATTR_MAX_THREADS); a kernel without them gets no occupancy. A kernel that moves its
  warpgroups' registers with setmaxnreg is counted at its launch count (ptxas's, which is
  what the SM reserves for the CTA); `setmaxnreg` lists the counts it moves to.
- hottest loop: among the address ranges [target, branch] of backward branches (BRA to a
  lower address) that contain an HMMA or HGMMA, the shortest. Its instructions are counted
  as listed, NOPs excluded. producer loop: the same for UTMALDG.
- global memory: the kernel's LDG and STG instructions, by width: "128" for 16-byte
  vectors (LDG.E.128, STG.E.128), "narrow" for the rest.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "sass_report.json")

# H100 SXM (compute capability 9.0) limits for the occupancy calculation.
H100 = {
    "regs_per_sm": 65536,
    "reg_alloc_unit_per_warp": 256,
    "max_threads_per_sm": 2048,
    "max_blocks_per_sm": 32,
    "smem_per_sm": 228 * 1024,
    "smem_per_block_max": 227 * 1024,
}
CLASSES = ("HMMA", "HGMMA", "LDSM", "LDGSTS", "UTMALDG", "SYNCS", "BAR")
TENSOR_CORE_KERNELS = ("conv3x3_igemm_kernel", "wgrad_igemm_kernel<")
HOPPER_KERNELS = ("conv3x3_wgmma_kernel",)
# Sources with sm_90a code only: built for that target alone.
SM90A_SOURCES = ("conv3x3_wgmma.cu",)


@dataclass
class LoopMix:
    start: int
    end: int
    counts: dict[str, int]
    total: int
    hmma_fraction: float  # HMMA + HGMMA


@dataclass
class KernelReport:
    arch: str
    name: str  # demangled
    mangled: str
    registers: int
    spill_bytes: int
    stack_bytes: int
    shared_bytes: int
    threads_per_block: int | None
    blocks_per_sm: int | None
    occupancy: float | None  # resident warps / 64
    limited_by: str | None
    counts_total: dict[str, int] = field(default_factory=dict)
    hottest_loop: LoopMix | None = None
    global_memory: dict[str, int] = field(default_factory=dict)
    producer_loop: LoopMix | None = None
    setmaxnreg: list[int] = field(default_factory=list)


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_FUNC = re.compile(r"^\s*Function : (\S+)")
_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def find_tool(name: str, given: str | None = None) -> str | None:
    """cuobjdump / nvcc: the given path, PATH, CUDA_HOME, or PyPI's nvidia-cuda-* wheels."""
    if given:
        return given
    found = shutil.which(name)
    if found:
        return found
    for root in filter(None, [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]):
        p = os.path.join(root, "bin", name)
        if os.path.exists(p):
            return p
    import site

    for sp in site.getsitepackages():
        hits = sorted(glob.glob(os.path.join(sp, "nvidia", "*", "bin", name)))
        hits += sorted(glob.glob(os.path.join(sp, "nvidia", "cuda_*", "bin", name)))
        if hits:
            return hits[-1]
    return None


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, out.stdout.splitlines(), strict=True))


def short_name(demangled: str) -> str:
    """`void ns::(anonymous namespace)::k<T>(Params<T>)` -> `k<T>` (namespaces dropped)."""
    name = demangled.replace("(anonymous namespace)::", "").replace("overfeat_kernels::", "")
    if name.endswith(")"):  # drop the parameter list: the parenthesis matching the last one
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return name.removeprefix("void ").strip()


def parse_sass(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """{mangled kernel: [(address, opcode, operands)]} from `cuobjdump -sass`."""
    funcs: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            current = m.group(1)
            funcs[current] = []
            continue
        if current is None:
            continue
        m = _INSTR.search(line)
        if m:
            funcs[current].append((int(m.group(1), 16), m.group(3), m.group(4)))
    return funcs


def parse_resources(text: str) -> dict[str, dict[str, int]]:
    """{mangled kernel: {registers, stack, shared, local}} from `cuobjdump -res-usage`."""
    res: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        m = _RES.search(line)
        if m and current:
            reg, stack, shared, local = (int(g) for g in m.groups())
            res[current] = {"registers": reg, "stack": stack, "shared": shared, "local": local}
            current = None
    return res


def parse_max_threads(text: str) -> dict[str, int]:
    """{mangled kernel: threads} from EIATTR_MAX_THREADS in `cuobjdump -elf`."""
    out: dict[str, int] = {}
    current = None
    want = False
    for line in text.splitlines():
        if line.startswith(".nv.info."):
            current = line.split()[0][len(".nv.info.") :]
            continue
        if line.startswith("."):
            current = None
        if current and "EIATTR_MAX_THREADS" in line:
            want = True
            continue
        if want and current and line.strip().startswith("Value:"):
            dims = [int(v, 16) for v in line.split(":", 1)[1].split()]
            total = 1
            for d in dims:
                total *= d
            out[current] = total
            want = False
    return out


def opcode_class(opcode: str) -> str:
    base = opcode.split(".")[0]
    return base if base in CLASSES else "other"


def spill_bytes(instrs: list[tuple[int, str, str]]) -> int:
    total = 0
    for _, op, _ in instrs:
        if op.split(".")[0] == "STL":
            width = {"64": 8, "128": 16, "U8": 1, "S8": 1, "U16": 2, "S16": 2}
            total += next((width[p] for p in op.split(".")[1:] if p in width), 4)
    return total


def global_memory(instrs: list[tuple[int, str, str]]) -> dict[str, int]:
    """Global loads and stores by width: {"LDG.128", "LDG.narrow", "STG.128", "STG.narrow"}."""
    out = {"LDG.128": 0, "LDG.narrow": 0, "STG.128": 0, "STG.narrow": 0}
    for _, op, _ in instrs:
        parts = op.split(".")
        if parts[0] in ("LDG", "STG"):
            out[f"{parts[0]}.{'128' if '128' in parts[1:] else 'narrow'}"] += 1
    return out


def setmaxnreg_counts(instrs: list[tuple[int, str, str]]) -> list[int]:
    """The register counts of the kernel's USETMAXREG instructions (setmaxnreg), sorted."""
    out = set()
    for _, op, args in instrs:
        if op.startswith("USETMAXREG"):
            m = re.search(r"(0x[0-9a-f]+|\b\d+\b)\s*$", args.strip())
            if m:
                out.add(int(m.group(1), 0))
    return sorted(out)


def hottest_loop(
    instrs: list[tuple[int, str, str]], marks: tuple[str, ...] = ("HMMA", "HGMMA")
) -> LoopMix | None:
    loops = []
    for addr, op, args in instrs:
        if op.split(".")[0] == "BRA":
            m = re.search(r"0x([0-9a-f]+)", args)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))
    best = None
    for start, end in loops:
        body = [(a, op) for a, op, _ in instrs if start <= a <= end and op != "NOP"]
        if not any(op.split(".")[0] in marks for _, op in body):
            continue
        if best is None or end - start < best[1] - best[0]:
            best = (start, end, body)
    if best is None:
        return None
    counts = {c: 0 for c in (*CLASSES, "other")}
    for _, op in best[2]:
        counts[opcode_class(op)] += 1
    total = len(best[2])
    mma = counts["HMMA"] + counts["HGMMA"]
    return LoopMix(best[0], best[1], counts, total, round(mma / total, 4))


def occupancy(
    regs: int, shared: int, threads: int | None
) -> tuple[int | None, float | None, str | None]:
    if not threads:
        return None, None, None
    warps = -(-threads // 32)
    unit = H100["reg_alloc_unit_per_warp"]
    regs_per_warp = -(-max(regs, 1) * 32 // unit) * unit
    limits = {
        "blocks": H100["max_blocks_per_sm"],
        "threads": H100["max_threads_per_sm"] // threads,
        "registers": (H100["regs_per_sm"] // regs_per_warp) // warps,
        "shared memory": H100["smem_per_sm"] // shared if shared else 10**9,
    }
    by = min(limits, key=lambda k: limits[k])
    blocks = limits[by]
    return blocks, round(blocks * warps / (H100["max_threads_per_sm"] // 32), 4), by


def report_object(path: str, arch: str, cuobjdump: str) -> list[KernelReport]:
    def run(flag: str) -> str:
        return subprocess.run(
            [cuobjdump, flag, path], capture_output=True, text=True, check=True
        ).stdout

    sass, res, threads = (
        parse_sass(run("-sass")),
        parse_resources(run("-res-usage")),
        parse_max_threads(run("-elf")),
    )
    names = demangle(sorted(sass))
    out = []
    for mangled, instrs in sorted(sass.items(), key=lambda kv: names[kv[0]]):
        r = res.get(mangled, {"registers": 0, "stack": 0, "shared": 0, "local": 0})
        t = threads.get(mangled)
        blocks, occ, by = occupancy(r["registers"], r["shared"], t)
        counts = {c: 0 for c in (*CLASSES, "other")}
        for _, op, _ in instrs:
            if op != "NOP":
                counts[opcode_class(op)] += 1
        name = short_name(names[mangled])
        out.append(
            KernelReport(
                arch,
                name,
                mangled,
                r["registers"],
                spill_bytes(instrs),
                r["stack"],
                r["shared"],
                t,
                blocks,
                occ,
                by,
                counts,
                hottest_loop(instrs),
                global_memory(instrs),
                hottest_loop(instrs, ("UTMALDG",)),
                setmaxnreg_counts(instrs),
            )
        )
    return out


def build_objects(archs: list[str], out_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
    """nvcc -cubin each csrc/cuda/*.cu for each arch, with the project's flags: the objects
    and the compiler's warning lines (ptxas's among them: spills, "wgmma ... serialized"),
    each as "arch file: line"."""
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise SystemExit("sass_report: nvcc not found (set CUDA_HOME or put it on PATH)")
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    incs = [f"-I{p}" for p in include_paths()] + [
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{cuda_home}/include",
    ]
    objects, warnings = [], []
    for arch in archs:
        for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
            if os.path.basename(src) in SM90A_SOURCES and arch != "sm_90a":
                continue
            obj = os.path.join(out_dir, f"{os.path.basename(src)}.{arch}.cubin")
            cmd = [
                *(nvcc, "-std=c++20", "-O3", f"-arch={arch}", "-cubin"),
                *("-DOVERFEAT_WITH_CUDA=1", "-D_GLIBCXX_USE_CXX11_ABI=1"),
                *(["-DOVERFEAT_HAS_SM90A=1"] if arch == "sm_90a" else []),
                *("-DTORCH_EXTENSION_NAME=_C", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills"),
                *(*incs, src, "-o", obj),
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            warnings += [
                f"{arch} {os.path.basename(src)}: {line.strip()}"
                for line in done.stderr.splitlines()
                if "warning" in line.lower()
            ]
            objects.append((arch, obj))
    return objects, warnings


def table(reports: list[KernelReport]) -> str:
    head = (
        "| arch | kernel | regs | setmaxnreg | spill B | smem B | threads | blocks/SM "
        "| occupancy | loop HMMA | HGMMA | LDSM | LDGSTS | UTMALDG | SYNCS | BAR | other "
        "| MMA % | producer loop UTMALDG / SYNCS / all | LDG 128 / narrow | STG 128 / narrow |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        loop = r.hottest_loop
        g = r.global_memory
        mix = (
            [str(loop.counts[c]) for c in (*CLASSES, "other")] + [f"{100 * loop.hmma_fraction:.0f}"]
            if loop
            else ["-"] * (len(CLASSES) + 2)
        )
        prod = r.producer_loop
        producer = (
            f"{prod.counts['UTMALDG']} / {prod.counts['SYNCS']} / {prod.total}" if prod else "-"
        )
        rows.append(
            f"| {r.arch} | `{r.name}` | {r.registers} | "
            f"{', '.join(map(str, r.setmaxnreg)) or '-'} | {r.spill_bytes} | {r.shared_bytes} | "
            f"{r.threads_per_block or '-'} | "
            f"{r.blocks_per_sm if r.blocks_per_sm is not None else '-'} | "
            f"{'-' if r.occupancy is None else f'{100 * r.occupancy:.0f} %'} | "
            + " | ".join(mix)
            + f" | {producer}"
            + f" | {g.get('LDG.128', 0)} / {g.get('LDG.narrow', 0)}"
            + f" | {g.get('STG.128', 0)} / {g.get('STG.narrow', 0)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="store_true", help="nvcc-build csrc/cuda/*.cu for --arch")
    ap.add_argument("--arch", action="append", help="sm_80, sm_90a (default both)")
    ap.add_argument("--object", action="append", default=[], help="ARCH=PATH of a built object")
    ap.add_argument("--json", default=DEFAULT_JSON)
    ap.add_argument("--cuobjdump")
    ap.add_argument("--only", help="keep kernels whose name contains this")
    args = ap.parse_args(argv)
    cuobjdump = find_tool("cuobjdump", args.cuobjdump)
    if cuobjdump is None:
        raise SystemExit("sass_report: cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    objects = [tuple(o.split("=", 1)) for o in args.object]
    warnings: list[str] | None = None  # the compiler's, when this run builds
    with tempfile.TemporaryDirectory() as tmp:
        if args.build:
            built, warnings = build_objects(args.arch or ["sm_80", "sm_90a"], tmp)
            objects += built
        if not objects:
            ap.error("nothing to report: give --build or --object ARCH=PATH")
        reports = [r for arch, path in objects for r in report_object(path, arch, cuobjdump)]
    if args.only:
        reports = [r for r in reports if args.only in r.name]
    print(table(reports))
    for line in warnings or []:
        print(f"warning: {line}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        doc = {"h100_limits": H100, "kernels": [asdict(r) for r in reports]}
        if warnings is not None:
            doc["build_warnings"] = warnings
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
