"""The executable cargo built for the target named argv[1], from cargo's `--message-format=json`
messages on stdin (test and bench binaries' names end in a hash; the messages also name the
workspace's binaries, built alongside, so the target's name picks the one)."""
import json
import sys

for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])
