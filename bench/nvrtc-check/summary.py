"""What bench/nvrtc-check.sh compiled: per run folder, the kernels burn's CUDA backend wrote
(kernels.log, in compile order), their modules as the compile-only driver numbered them (NNNN.ptx,
ptxas' report beside each in NNNN.ptxas) and its launches (launches.tsv). Prints one table of
CancerNet's own kernels (models::cube) and a summary line; fails if the kernels and modules do
not pair up, or if one of CancerNet's kernels spills registers on sm_90 (slow on a GPU: look at it).
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

ENTRY = re.compile(r'extern "C" __global__ void\s*(?:__launch_bounds__\((\d+)\))?\s*(\w+)\s*\(')


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


def main(runs):
    ours = defaultdict(lambda: {"variants": 0, "regs": 0, "spill": 0, "stack": 0, "threads": set(), "launches": 0})
    modules = launches = 0
    problems = []
    for run in map(Path, runs):
        compiled = kernels(run)
        ptx = sorted(run.glob("*.ptx"))
        if len(ptx) != len(compiled):
            problems.append(f"{run}: {len(compiled)} kernels compiled but {len(ptx)} modules loaded")
            continue
        modules += len(ptx)
        by_module = {}
        for (rust, entry, threads), module in zip(compiled, ptx):
            regs, spill, stack = ptxas(module.with_suffix(".ptxas"))
            by_module[module.stem] = (rust, entry)
            if rust.startswith("models::"):
                k = ours[entry]
                k["variants"] += 1
                k["regs"] = max(k["regs"], regs)
                k["spill"] = max(k["spill"], spill)
                k["stack"] = max(k["stack"], stack)
                k["threads"].add(threads)
                if spill:
                    problems.append(f"{rust} ({entry}, {module}) spills {spill} bytes on sm_90")
        for line in (run / "launches.tsv").read_text().splitlines():
            module, entry = line.split("\t")[:2]
            launches += 1
            rust, compiled_entry = by_module[module]
            if compiled_entry != entry:
                problems.append(f"{run}: module {module} launched as {entry}, compiled as {compiled_entry}")
            if rust.startswith("models::"):
                ours[entry]["launches"] += 1
    print("CancerNet's own CUDA kernels (models::cube) on sm_90a (ptxas; max over variants):")
    print(f"{'kernel':<28} {'variants':>8} {'registers':>9} {'spill B':>7} {'stack B':>7} {'threads':>8} {'launches':>8}")
    for entry, k in sorted(ours.items()):
        threads = ",".join(map(str, sorted(k["threads"])))
        print(
            f"{entry:<28} {k['variants']:>8} {k['regs']:>9} {k['spill']:>7} {k['stack']:>7} {threads:>8} {k['launches']:>8}"
        )
    for p in problems:
        print("PROBLEM:", p)
    print(
        f"nvrtc check: {modules} kernels ({sum(k['variants'] for k in ours.values())} of CancerNet's own) "
        f"compiled by NVRTC and assembled by ptxas for sm_90a, {launches} launches accepted, "
        f"{len(problems)} problems (nothing ran: compile-only driver)"
    )
    sys.exit(1 if problems or not ours else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
