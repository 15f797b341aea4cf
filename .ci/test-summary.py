"""`make test`'s summary: one line counting the tests that ran, the CUDA tests that could only
check the no-GPU error and those that skipped, then a line for each that skipped (cargo hides a
passing test's stderr, so a skip reads as "ok" in its output). Usage: test-summary.py
TEST_OUTPUT SKIP_LOG (the second written by datasets::testdata::skip and not_on_this_machine,
one tab-separated line each)."""
import re
import sys

output, skip_log = sys.argv[1:3]
passed = sum(int(n) for n in re.findall(r"^test result: ok\. (\d+) passed", open(output).read(), re.M))
try:
    lines = [line.rstrip("\n").split("\t", 3) for line in open(skip_log) if line.strip()]
    # A test that skips twice (two absent folders) is one test.
    skips = list({(s[1], s[2]): s for s in lines}.values())
except FileNotFoundError:
    skips = []
skipped = [s for s in skips if s[0] == "skipped"]
no_gpu = [s for s in skips if s[0] == "no-gpu"]
line = f"make test: {passed - len(skips)} tests ran and passed"
if no_gpu:
    line += f"; {len(no_gpu)} CUDA tests checked only the error that says there is no GPU here"
if skipped:
    line += f"; {len(skipped)} SKIPPED (IDC_REQUIRE_ALL=0)"
print(line)
for kind, binary, test, why in skipped:
    print(f"  SKIPPED {binary}::{test}: {why}")
