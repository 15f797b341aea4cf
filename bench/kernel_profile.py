"""One training step's kernels from a cubecl profile log (CUBECL_DEBUG_OPTION=profile): each
kernel's launches and time in the log's last step, the slowest first, then that step's launches
in order (which map to the layers). cubecl prints a summary table at each sync; the gpu_ops bench
syncs after each step, and its first step also compiles, so the last table is a warm step.

What a time is: cubecl times each launch alone, waiting for the device before and after it. On
CUDA (cubecl 0.10) it reads the host's clock, so a launch's time is its kernel's plus a launch
call and a wait: short kernels show mostly that. The same profile on bench/nvrtc-check.sh's
compile-only driver, where nothing runs, is that part alone (a floor to read GPU times against).

Usage: python3 bench/kernel_profile.py PROFILE_LOG [LAUNCHES_OUT]
(LAUNCHES_OUT, when given, gets the last step's launches in order, one per line.)"""
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
LAUNCH = re.compile(r"^\| ([\d.]+)(ns|µs|us|ms|s) +\| (.+?) \| \w+Runtime\s*$")
SUMMARY = re.compile(r"^\| Name +\| Duration")
TOTAL = re.compile(r"^\| Total +\| [^|]+\| +(\d+) +\|")


def steps(lines):
    """(launches as (name, ms), the launches its summary table counts), one a step."""
    found, launches, table = [], [], False
    for line in lines:
        if SUMMARY.match(line):
            table = True
            continue
        m = TOTAL.match(line) if table else None
        if m:
            found.append((launches, int(m.group(1))))
            launches, table = [], False
            continue
        m = LAUNCH.match(line)
        if m:
            value, unit, name = m.groups()
            launches.append((name.strip(), float(value) * UNITS[unit]))
    return found


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("Usage: ")[1])
    try:
        with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
            found = steps(f)
    except OSError as e:
        sys.exit(f"kernel_profile: {e}")
    if len(found) < 2:
        sys.exit(f"{sys.argv[1]}: fewer than 2 profiled steps (the first also compiles)")
    last, counted = found[-1]
    if len(last) != counted or counted == 0:
        sys.exit(f"{sys.argv[1]}: {len(last)} launches read in the last step, its table counts {counted}")
    total = sum(ms for _, ms in last)
    kinds = {}
    for name, ms in last:
        count, sum_ms = kinds.get(name, (0, 0.0))
        kinds[name] = (count + 1, sum_ms + ms)
    print(f"{'kernel (last profiled step)':<44} {'launches':>8} {'ms':>9} {'share':>6}")
    for name, (count, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:<44} {count:>8} {ms:>9.3f} {ms / max(total, 1e-12):>6.1%}")
    print(f"{'all':<44} {len(last):>8} {total:>9.3f}")
    print("(each launch timed alone, a launch call and a wait included: see bench/kernel_profile.py)")
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            f.writelines(f"{ms:9.3f} ms  {name}\n" for name, ms in last)


if __name__ == "__main__":
    main()
