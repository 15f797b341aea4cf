"""Every test that README.md's and docs/testing.md's tables name exists, in the file named before
it: `make test` runs this, so the map from each promise to its test cannot point at nothing.
A cell names a file (`cli.rs`, `trainer/src/config/tests.rs`: any tracked file whose path ends
so), then its tests (`snake_case` names); text in parentheses is commentary and not read."""
import functools
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/testing.md"]
FILES = subprocess.run(["git", "ls-files", "*.rs", "*.py", "*.sh"], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout.split()
NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")
SOURCE = re.compile(r"[\w./-]+\.(rs|py|sh)")
INTERVAL = re.compile(r"[(\[] *-?[\d.e]+ *, *-?[\d.e]+ *[)\]]")  # (0, 4], [0, 1): not parentheses


def without_parentheses(text: str) -> str:
    out, depth = [], 0
    text = INTERVAL.sub("", text)
    for ch in text:
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")" and depth > 0
    return "".join(out)


@functools.cache
def source(path: str) -> str:
    return (ROOT / path).read_text()


def defines(path: str, name: str) -> bool:
    return re.search(rf"\bfn {name}\b|\bdef {name}\b", source(path)) is not None


problems, checked = [], 0
for doc in DOCS:
    for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        if not line.startswith("|"):
            continue
        for cell in line.split("|"):
            candidates = None
            for token in re.findall(r"`([^`]+)`", without_parentheses(cell)):
                if SOURCE.fullmatch(token):
                    candidates = [f for f in FILES if f == token or f.endswith("/" + token)]
                    if not candidates:
                        problems.append(f"{doc}:{number}: no file {token}")
                elif candidates is not None and NAME.fullmatch(token):
                    checked += 1
                    if not any(defines(f, token) for f in candidates):
                        problems.append(f"{doc}:{number}: {token} is not in {' or '.join(candidates) or '?'}")
for p in problems:
    print(p)
print(f"test map: {checked} named tests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
