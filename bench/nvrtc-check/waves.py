"""How one training step's launches would fill an H100/H200, from the compile-only driver's logs:
`WAVES=256 bench/nvrtc-check.sh` runs the step at that batch after 1 and after 2 timed steps
(runs step-waves-1 and step-waves-2) and calls this with the two folders. For each launch of the
second run's last step, by kernel variant (module) and grid, in launch order: its cubes, units a cube, ptxas'
registers, how many such cubes one SM holds at once (by registers, threads, shared memory, and
the 32 a Hopper SM schedules) and the waves on 132 SMs. Cubes of fewer than 32 units leave part
of every warp idle; well under one wave leaves SMs idle. Occupancy on paper, not a timing.
"""

import math
import re
import sys
from collections import OrderedDict
from pathlib import Path

from summary import REGISTERS_PER_SM, registers

SMS = 132
THREADS_PER_SM = 2048
CUBES_PER_SM = 32
SHARED_PER_SM = 228 * 1024


def main(one, two):
    one, two = Path(one), Path(two)
    before = len((one / "launches.tsv").read_text().splitlines())
    step = (two / "launches.tsv").read_text().splitlines()[before:]
    rows = OrderedDict()
    for line in step:
        module, entry, grid, block, shared = line.split("\t")
        report = (two / f"{module}.ptxas").read_text()
        regs = int(re.search(r"Used (\d+) registers", report).group(1))
        cubes = math.prod(map(int, grid.split(",")))
        units = math.prod(map(int, block.split(",")))
        per_sm = min(
            REGISTERS_PER_SM // max(registers(regs, units), 1),
            THREADS_PER_SM // units,
            SHARED_PER_SM // int(shared) if int(shared) else CUBES_PER_SM,
            CUBES_PER_SM,
        )
        row = rows.setdefault((module, grid, block), [entry, 0, cubes, units, regs, per_sm])
        row[1] += 1
    print(f"one training step: {len(step)} launches")
    print(f"{'kernel':<32} {'launches':>8} {'cubes':>7} {'units':>5} {'registers':>9} {'cubes/SM':>8} {'waves':>6}")
    for entry, n, cubes, units, regs, per_sm in rows.values():
        waves = cubes / (per_sm * SMS)
        print(f"{entry[:32]:<32} {n:>8} {cubes:>7} {units:>5} {regs:>9} {per_sm:>8} {waves:>6.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
