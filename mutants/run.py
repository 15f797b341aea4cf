#!/usr/bin/env python3
"""Mutation testing of the files `.cargo/mutants.toml` lists (`make mutants`), and its summary.

    mutants/run.py [FILE...]   test the mutants of the given files (default: every listed file
                               whose recorded results are not of its current text), record them
                               in mutants/outcomes.tsv, write docs/mutants.md
    mutants/run.py --shard K/N FILE
                               test only part K (0 .. N-1) of FILE's mutants, in N parts: a file
                               with too many for one sitting, one part a session;
                               the file counts as tested once all N parts are recorded
    mutants/run.py --survivors [FILE...]
                               test the mutants that lived or timed out again (of the given
                               files, default all), against every test of the workspace at HEAD,
                               where their file's text is the one recorded: after tests were
                               added (a timeout is tested again in case it was a slow test)
    mutants/run.py --summary   only write docs/mutants.md from the record
    mutants/run.py --check     exit 1 unless every listed file has results of its current text,
                               a score of at least 90%, and a reason for each mutant that lives

What is tested is the commit HEAD (uncommitted changes are not): it is unpacked into
target/mutants/tree, where cargo-mutants changes the code in place, one mutant at a time, sharing
target/ with the checkout (incremental release builds: seconds a mutant). Each mutant runs its own
crate's tests first; the ones that live run again with every test of the workspace, so a mutant
counts as caught when any test that can reach it fails. Reasons for the ones that still live are
kept by hand in mutants/why.toml, keyed by file and change (positions move as code changes).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".cargo/mutants.toml"
RECORD = ROOT / "mutants/outcomes.tsv"
WHY = ROOT / "mutants/why.toml"
SUMMARY = ROOT / "docs/mutants.md"
WORK = ROOT / "target/mutants"
TREE = WORK / "tree"
MIN_SCORE = 0.9
HEADER = "file\tblob\tcommit\toutcome\tmutant\tpart\n"
# The part column of a row tested with the whole file.
WHOLE = "-"
# cargo-mutants' outcome names, as the record and the summary spell them.
OUTCOMES = {
    "CaughtMutant": "caught",
    "Timeout": "timeout",
    "MissedMutant": "missed",
    "Unviable": "unviable",
}
KILLED = ("caught", "timeout")
# The second pass's time limit for a mutant's tests, in seconds. cargo-mutants sets its own from
# the baseline, which in that pass too runs only the crate's own tests (models': under a second,
# so a 20 s limit), while every test of the workspace takes ~40 s here: with the automatic limit
# a mutant no test catches would count as timed out, which counts as caught.
WORKSPACE_TIMEOUT = 300
# The outcome of the record's row saying that part K/N of a file's mutants was tested (each of
# the part's mutants has its own row with that part).
SHARD = "shard"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def listed_files() -> list[str]:
    """The files the config's globs name, as cargo-mutants would examine them."""
    globs = tomllib.loads(CONFIG.read_text())["examine_globs"]
    return sorted({str(p.relative_to(ROOT)) for g in globs for p in ROOT.glob(g) if p.is_file()})


def exclude_patterns() -> list[str]:
    """The config's exclude_re: mutants not to test (a test fixture's)."""
    return tomllib.loads(CONFIG.read_text()).get("exclude_re", [])


def excluded(mutant: str) -> bool:
    """Whether the config excludes `mutant`. cargo-mutants 27.1 does not apply exclude_re to its
    struct-field deletions (sourcefrog/cargo-mutants#632): it tests them, and the record drops them."""
    return any(re.search(r, mutant) for r in exclude_patterns())


def blob(path: str, rev: str = "HEAD") -> str:
    """The git object id of `path` at `rev` (what the record's results are of)."""
    return git("rev-parse", f"{rev}:{path}")


def current_blob(path: str) -> str:
    """The object id of the file as it is in the checkout (committed or not)."""
    return git("hash-object", path)


def change(mutant: str) -> str:
    """A mutant's name without its line and column: `file: change`, stable while code moves."""
    return re.sub(r":\d+:\d+: ", ": ", mutant, count=1)


def read_record() -> list[list[str]]:
    if not RECORD.exists():
        return []
    rows = [line.rstrip("\n").split("\t") for line in RECORD.read_text().splitlines()[1:] if line]
    rows = [r + [WHOLE] * (6 - len(r)) for r in rows]  # rows from before the part column
    return [r for r in rows if not excluded(r[4])]


def write_record(rows: list[list[str]]) -> None:
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(HEADER + "".join("\t".join(r) + "\n" for r in sorted(rows)))
    tmp.replace(RECORD)


def unpack(commit: str) -> None:
    """The commit's files in TREE, with the checkout's Python environment and the real patches."""
    if TREE.exists():
        shutil.rmtree(TREE)
    TREE.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    # -m: the files dated now. With the commit's dates they would look older than the builds of
    # the last run's final mutant, and cargo would test that mutant in place of the code.
    subprocess.run(["tar", "-x", "-m", "-C", str(TREE)], input=archive, check=True)
    if (ROOT / ".venv").exists():
        (TREE / ".venv").symlink_to(ROOT / ".venv")


def cargo_env() -> dict[str, str]:
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target"), CARGO_PROFILE_RELEASE_INCREMENTAL="true",
               IDC_REQUIRE_ALL="1", PROPTEST_DISABLE_FAILURE_PERSISTENCE="1")
    shared = (ROOT / "../shared/data").resolve()
    if shared.is_dir():
        env.setdefault("IDC_SHARED_DATA", str(shared))
    return env


def build_binaries() -> None:
    """Every binary of the tree, unmutated. A crate's tests run the other crates' binaries from
    target/ (runtime's run `datasets`, `trainer`, `exporter`), which its own build does not
    remake: without this they would be whatever the last run built, its last mutant included.
    Built as the second pass builds them (the same features: no second copy of the dependencies)."""
    cmd = ["cargo", "test", "--release", "--workspace", "--no-run"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=TREE, env=cargo_env(), check=True)


def cargo_mutants(files: list[str], out: Path, extra: list[str], may_find_none: bool = False) -> dict:
    """One cargo-mutants run over `files` in TREE; its outcomes.json."""
    cmd = ["cargo", "mutants", "--no-config", "--in-place", "--profile", "release", "--no-shuffle",
           "--output", str(out), *extra]
    for f in files:
        cmd += ["--file", f]
    for r in exclude_patterns():
        cmd += ["--exclude-re", r]
    print("+", " ".join(cmd), flush=True)
    # cargo-mutants exits 2 when mutants were missed, 3 on timeouts: results either way.
    rc = subprocess.run(cmd, cwd=TREE, env=cargo_env()).returncode
    outcomes = out / "mutants.out/outcomes.json"
    if rc == 0 and not outcomes.exists() and may_find_none:
        return {"outcomes": []}  # no mutants in the files: cargo-mutants writes no results
    if rc not in (0, 2, 3) or not outcomes.exists():
        sys.exit(f"cargo mutants failed (exit {rc}); its log: {out / 'mutants.out'}")
    return json.loads(outcomes.read_text())


def mutant_outcomes(report: dict) -> dict[str, tuple[str, str]]:
    """Mutant name -> (file, outcome) from an outcomes.json."""
    result = {}
    for o in report["outcomes"]:
        m = o["scenario"].get("Mutant") if isinstance(o["scenario"], dict) else None
        if m and o["summary"] in OUTCOMES and not excluded(m["name"]):
            result[m["name"]] = (m["file"], OUTCOMES[o["summary"]])
    return result


def shards_of(rows: list[list[str]]) -> tuple[int, set[int]]:
    """Of one file's rows: in how many parts its mutants were tested (0: whole), and which."""
    parts = [r[5].split("/") for r in rows if r[3] == SHARD]
    return (int(parts[0][1]), {int(k) for k, _ in parts}) if parts else (0, set())


def missing_parts(rows: list[list[str]]) -> list[int]:
    parts, done = shards_of(rows)
    return [k for k in range(parts) if k not in done]


def record(head: str, files: list[str], found: dict[str, tuple[str, str]], shard: str | None = None) -> None:
    """Replaces the record's rows of `files` with `found`, the outcomes of their text at `head`;
    for part `shard` ("K/N") of a file, only that part's rows, keeping the other parts' of the
    same text."""
    blobs = {f: blob(f, head) for f in files}
    rows = read_record()
    keep = [r for r in rows if r[0] not in blobs]
    part = shard or WHOLE
    if shard:
        (f,) = files
        keep += [r for r in rows if r[0] == f and r[1] == blobs[f] and r[5] not in (shard, WHOLE)]
        keep.append([f, blobs[f], head, SHARD, "-", shard])
    rows = keep + [[f, blobs[f], head, o, name, part] for name, (f, o) in found.items()]
    # A file (or part) without mutants is recorded as such, to count as tested.
    with_mutants = {f for f, _ in found.values()}
    rows += [[f, blobs[f], head, "none", "-", part] for f in files if f not in with_mutants]
    write_record(rows)


def regex_escape(text: str) -> str:
    """`text` as a regex of the Rust `regex` crate (which cargo-mutants uses) that matches it."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in text)


def two_passes(files: list[str], save, only: list[str] | None = None, shard: str | None = None) -> None:
    """Each mutant of `files` (or only the ones named, or part `shard`) against its own crate's
    tests, then the ones that lived against every test of the workspace; `save` gets the outcomes
    after each pass (an interrupted second pass leaves the survivors counted as missed)."""
    out = WORK / "passes"
    shutil.rmtree(out, ignore_errors=True)
    filters = [x for name in only or [] for x in ("--examine-re", f"^{regex_escape(name)}$")]
    found = mutant_outcomes(cargo_mutants(files, out, filters + (["--shard", shard] if shard else []), True))
    save(found)
    # The second pass names the ones that lived: not the first pass's timeouts (a mutant that
    # hangs its crate's tests hangs the workspace's too, each for the whole limit).
    names = sorted(name for name, (_, o) in found.items() if o == "missed")
    if names:
        alive = sorted({found[name][0] for name in names})
        filters = [x for name in names for x in ("--examine-re", f"^{regex_escape(name)}$")]
        again = cargo_mutants(alive, out, ["--test-workspace=true", "--timeout", str(WORKSPACE_TIMEOUT), *filters])
        for name, (f, o) in mutant_outcomes(again).items():
            if name in found and o != "unviable":
                found[name] = (f, o)
        save(found)


def by_crate(files: list[str]) -> list[list[str]]:
    """`files` grouped by their crate (the first folder of the path), in order."""
    crates: dict[str, list[str]] = {}
    for f in files:
        crates.setdefault(f.split("/", 1)[0], []).append(f)
    return list(crates.values())


def run(files: list[str], shard: str | None = None) -> None:
    head = git("rev-parse", "HEAD")  # commits made while it runs are not what it tests
    unpack(head)
    # One crate at a time, each after a fresh build of the binaries: the first pass of a crate
    # leaves its last mutant's binary in target/, which the next crate's tests would run.
    for group in by_crate(files):
        build_binaries()
        two_passes(group, lambda found, group=group: record(head, group, found, shard), shard=shard)
    # And once more at the end: the checkout's own tests that run a sibling binary (trainer's
    # GPU tests run `exporter`) would otherwise run the last mutant's (it happened: "verification
    # failed ... max 1.192e-7, 0 of 44 argmax disagree").
    build_binaries()


def retest_survivors(files: list[str]) -> None:
    head = git("rev-parse", "HEAD")
    alive = {r[4] for r in read_record()
             if r[0] in files and r[3] in ("missed", "timeout") and r[1] == blob(r[0], head)}
    if not alive:
        print("no recorded survivor of a file whose text is HEAD's")
        return
    unpack(head)
    build_binaries()

    def save(found: dict[str, tuple[str, str]]) -> None:
        rows = read_record()
        for r in rows:
            if r[4] in alive and r[4] in found:
                r[2], r[3] = head, found[r[4]][1]
        write_record(rows)

    two_passes(sorted({m.split(":", 1)[0] for m in alive}), save, only=sorted(alive))
    build_binaries()  # not the last mutant's binaries left in target/ (see run())


def summarize() -> list[str]:
    """Writes docs/mutants.md; returns what falls short of the standard (empty when all holds)."""
    why = tomllib.loads(WHY.read_text()) if WHY.exists() else {}
    rows = read_record()
    problems = []
    table = ["| file | caught | timeout | missed | unviable | score | tested at | current |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    alive = []
    for f in listed_files():
        mine = [r for r in rows if r[0] == f]
        if not mine:
            table.append(f"| `{f}` | | | | | | not yet | no |")
            problems.append(f"{f}: no results")
            continue
        n = {o: sum(r[3] == o for r in mine) for o in OUTCOMES.values()}
        viable = n["caught"] + n["timeout"] + n["missed"]
        score = (n["caught"] + n["timeout"]) / viable if viable else 1.0
        current = mine[0][1] == current_blob(f)
        parts, done = shards_of(mine)
        partly = f", {len(done)} of {parts} parts" if len(done) < parts else ""
        table.append(f"| `{f}` | {n['caught']} | {n['timeout']} | {n['missed']} | {n['unviable']} "
                     f"| {score:.1%} | {', '.join(sorted({r[2][:10] for r in mine}))} "
                     f"| {'yes' if current else 'no'}{partly} |")
        if not current:
            problems.append(f"{f}: changed since its results")
        if partly:
            problems.append(f"{f}: parts {', '.join(str(k) for k in missing_parts(mine))} of {parts} not "
                            f"tested yet (`mutants/run.py --shard K/{parts} {f}`)")
        if score < MIN_SCORE:
            problems.append(f"{f}: score {score:.1%} < {MIN_SCORE:.0%}")
        for r in sorted(r for r in mine if r[3] == "missed"):
            reason = why.get(change(r[4]))
            alive.append(f"- `{r[4]}`: {reason or '**no reason recorded**'}")
            if not reason:
                problems.append(f"{r[4]}: lives, no reason in mutants/why.toml")
    totals = {o: sum(r[3] == o for r in rows if r[0] in listed_files()) for o in OUTCOMES.values()}
    text = [
        "# Mutation testing",
        "",
        "Generated by `mutants/run.py` from `mutants/outcomes.tsv` and `mutants/why.toml`; do not edit.",
        "`make mutants` tests the listed files whose results are not of their current text",
        "(`make mutants MUTANTS_ARGS=evaluation/src/context.rs` one file); how it works: docs/testing.md.",
        "Score: caught (a test failed, or ran past the time limit) over viable (built) mutants.",
        "",
        f"In all: {totals['caught']} caught, {totals['timeout']} timed out, {totals['missed']} missed, "
        f"{totals['unviable']} unviable.",
        "",
        *table,
        "",
        "## The mutants that live, and why",
        "",
        *(alive or ["None."]),
        "",
    ]
    if problems:
        text += ["## Short of the standard", "", *(f"- {p}" for p in problems), ""]
    tmp = SUMMARY.with_suffix(".tmp")
    tmp.write_text("\n".join(text))
    tmp.replace(SUMMARY)
    return problems


def shard_one(shard: str, files: list[str], mine: dict[str, list[list[str]]]) -> None:
    """`--shard K/N FILE`: part K of FILE's mutants, in the N parts its text was recorded in."""
    if not re.fullmatch(r"\d+/\d+", shard) or len(files) != 1:
        sys.exit("--shard K/N takes one file, and K and N as numbers (K from 0 to N-1)")
    k, n = map(int, shard.split("/"))
    if not k < n:
        sys.exit(f"--shard {shard}: K goes from 0 to {n - 1}")
    f = files[0]
    same_text = [r for r in mine[f] if r[1] == blob(f)]
    recorded = shards_of(same_text)[0]
    if recorded and recorded != n:
        sys.exit(f"{f} is recorded in {recorded} parts for its text (missing: "
                 f"{missing_parts(same_text) or 'none'}): use --shard K/{recorded}, or remove its rows "
                 f"from {RECORD.relative_to(ROOT)} to start over")
    run(files, shard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="files to test (default: the listed ones not current)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shard", metavar="K/N", help="test only part K (0 .. N-1) of one file's mutants")
    mode.add_argument("--survivors", action="store_true",
                      help="test the recorded survivors (and timeouts) again")
    mode.add_argument("--summary", action="store_true", help="only write docs/mutants.md")
    mode.add_argument("--check", action="store_true", help="fail unless every listed file meets the standard")
    args = parser.parse_args()
    listed = listed_files()
    if args.survivors:
        retest_survivors(args.files or listed)
    elif not (args.summary or args.check):
        if git("status", "--porcelain", "--untracked-files=no", "--", *listed):
            print("note: uncommitted changes to listed files are not tested (HEAD is)", file=sys.stderr)
        unknown = [f for f in args.files if f not in listed]
        if unknown:
            sys.exit(f"not listed in {CONFIG.relative_to(ROOT)}: {', '.join(unknown)}")
        rows = read_record()
        mine = {f: [r for r in rows if r[0] == f] for f in listed}
        if args.shard:
            shard_one(args.shard, args.files, mine)
        else:
            todo = args.files or [f for f in listed if not mine[f] or mine[f][0][1] != blob(f)]
            # Files tested in parts: all parts again when the text changed, else the ones missing.
            parts = {f: (list(range(n)) if f in todo else missing_parts(mine[f]), n)
                     for f in ([] if args.files else listed) for n in [shards_of(mine[f])[0]] if n}
            whole = [f for f in todo if f not in parts]
            if whole:
                run(whole)
            for f, (ks, n) in parts.items():
                for k in ks:
                    run([f], f"{k}/{n}")
            if not whole and not any(ks for ks, _ in parts.values()):
                print("every listed file has results of its committed text")
    problems = summarize()
    print(f"wrote {SUMMARY.relative_to(ROOT)}" + (f"; {len(problems)} short of the standard:" if problems else ""))
    for p in problems:
        print("  " + p)
    if args.check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
