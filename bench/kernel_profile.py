"""One training step's kernels from a cubecl profile log (CUBECL_DEBUG_OPTION=profile): each
kernel's launches and time in the log's last step, the slowest first, then that step's launches
in order (which map to the layers). cubecl prints a summary table at each sync; the gpu_ops bench
syncs after each step, and its first step also compiles, so the last table is a warm step.

Usage: python3 bench/kernel_profile.py PROFILE_LOG [LAUNCHES_OUT]
(LAUNCHES_OUT, when given, gets the last step's launches in order, one per line.)"""
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
LAUNCH = re.compile(r"^\| ([\d.]+)(ns|µs|us|ms|s) +\| (.+?) \| \w+Runtime\s*$")
SUMMARY = re.compile(r"^\| Name +\| Duration")


def steps(lines):
    """The launches (name, ms) before each summary table, one list a step."""
    found, launches = [], []
    for line in lines:
        if SUMMARY.match(line):
            found.append(launches)
            launches = []
            continue
        m = LAUNCH.match(line)
        if m:
            value, unit, name = m.groups()
            launches.append((name.strip(), float(value) * UNITS[unit]))
    return found


def main():
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        found = steps(f)
    if len(found) < 2:
        sys.exit(f"{sys.argv[1]}: fewer than 2 profiled steps (the first also compiles)")
    last = found[-1]
    total = sum(ms for _, ms in last)
    kinds = {}
    for name, ms in last:
        count, sum_ms = kinds.get(name, (0, 0.0))
        kinds[name] = (count + 1, sum_ms + ms)
    print(f"{'kernel (last profiled step)':<44} {'launches':>8} {'ms':>9} {'share':>6}")
    for name, (count, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<44} {count:>8} {ms:>9.3f} {ms / total:>6.1%}")
    print(f"{'all':<44} {len(last):>8} {total:>9.3f}")
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            f.writelines(f"{ms:9.3f} ms  {name}\n" for name, ms in last)


if __name__ == "__main__":
    main()
