"""What bench/nvrtc-check.sh compiled: per run folder, the kernels burn's CUDA backend wrote
(kernels.log, in compile order), their modules as the compile-only driver numbered them (NNNN.ptx,
ptxas' report beside each in NNNN.ptxas) and its launches (launches.tsv). Prints one table of
CancerNet's own kernels (models::cube) and a summary line, counting a kernel compiled in several
runs once (by its PTX). Fails if the kernels and modules do not pair up, if a launch asks for more
registers than an SM has (ptxas' count times the cube's units: the one launch limit the driver
cannot see), or if one of CancerNet's kernels spills registers on sm_90 (slow on a GPU).
"""

import hashlib
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

ENTRY = re.compile(r'extern "C" __global__ void\s*(?:__launch_bounds__\((\d+)\))?\s*(\w+)\s*\(')
REGISTERS_PER_SM = 65536


def kernels(run):
    """(rust type, entry, threads per cube) of each kernel compiled, in order."""
    log = (run / "kernels.log").read_text()
    found = []
    for block in log.split("[START_KERNEL_COMPILATION]")[1:]:
        block = block.split("[END_KERNEL_COMPILATION]")[0]
        rust = block.split("name:", 1)[1].split("id:", 1)[0].split("<")[0].strip()
        threads, entry = ENTRY.search(block).groups()
        found.append((rust, entry, int(threads or 0)))
    return found


def ptxas(report):
    """Registers, spill bytes (stores + loads) and stack frame bytes of a module's entry."""
    text = report.read_text()
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    stack, stores, loads = map(
        int,
        re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text).groups(),
    )
    return regs, stores + loads, stack


def registers(regs, threads):
    """The registers a cube of `threads` units takes on an SM: allocated per warp of 32, in 256s."""
    per_warp = -(-regs * 32 // 256) * 256
    return -(-threads // 32) * per_warp


def main(runs):
    ours = defaultdict(lambda: {"ptx": set(), "regs": 0, "spill": 0, "stack": 0, "threads": set()})
    distinct, distinct_ours = set(), set()
    launches = 0
    problems = []
    for run in map(Path, runs):
        compiled = kernels(run)
        ptx = sorted(run.glob("*.ptx"), key=lambda p: int(p.stem))
        if len(ptx) != len(compiled):
            problems.append(f"{run}: {len(compiled)} kernels compiled but {len(ptx)} modules loaded")
            continue
        modules = {}
        for (rust, entry, threads), module in zip(compiled, ptx):
            digest = hashlib.sha256(module.read_bytes()).hexdigest()
            regs, spill, stack = ptxas(module.with_suffix(".ptxas"))
            modules[module.stem] = (rust, entry, regs)
            distinct.add(digest)
            if rust.startswith("models::"):
                distinct_ours.add(digest)
                k = ours[entry]
                k["ptx"].add(digest)
                k["regs"] = max(k["regs"], regs)
                k["spill"] = max(k["spill"], spill)
                k["stack"] = max(k["stack"], stack)
                k["threads"].add(threads)
                if spill:
                    problems.append(f"{rust} ({entry}, {module}) spills {spill} bytes on sm_90")
        for line in (run / "launches.tsv").read_text().splitlines():
            module, entry, _grid, block = line.split("\t")[:4]
            launches += 1
            rust, compiled_entry, regs = modules[module]
            if compiled_entry != entry:
                problems.append(f"{run}: module {module} launched as {entry}, compiled as {compiled_entry}")
            threads = math.prod(map(int, block.split(",")))
            if registers(regs, threads) > REGISTERS_PER_SM:
                problems.append(f"{rust} ({entry}): {regs} registers x {threads} units exceed an SM's")
    print("CancerNet's own CUDA kernels (models::cube) on sm_90a (ptxas; max over variants):")
    print(f"{'kernel':<28} {'variants':>8} {'registers':>9} {'spill B':>7} {'stack B':>7} {'units a cube':>13}")
    for entry, k in sorted(ours.items()):
        threads = ",".join(map(str, sorted(k["threads"])))
        print(f"{entry:<28} {len(k['ptx']):>8} {k['regs']:>9} {k['spill']:>7} {k['stack']:>7} {threads:>13}")
    for p in sorted(set(problems)):
        print("PROBLEM:", p)
    print(
        f"nvrtc check: {len(distinct)} distinct kernels ({len(distinct_ours)} of them CancerNet's own) "
        f"compiled by NVRTC and assembled by ptxas for sm_90a, {launches} launches within sm_90's "
        f"limits, {len(set(problems))} problems (nothing ran: compile-only driver)"
    )
    sys.exit(1 if problems or not ours else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
