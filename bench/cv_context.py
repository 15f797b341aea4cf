"""The tables of bench/cv_context.sh: a run's folds alone and with neighbour context.

Usage: python3 bench/cv_context.py DIR NAME WEIGHT...
DIR/alone/NAME-<fold>.{json,csv} and DIR/context-<WEIGHT>/NAME-<fold>.{json,csv} are
`runtime eval --json/--predictions` outputs. Prints, for the first weight, a per-fold Markdown
table (patches with a neighbour; BAC, ROC AUC, PR AUC alone and with context; F1 with context)
with mean ± sd, then mean ± sd for every weight, then both pooled over the whole patients of
$IDC_SHARED_DATA/idc-real (default ../shared/data) and over the others.
"""
import csv
import json
import os
import statistics
import sys
from pathlib import Path

from cv_ensemble import bac, roc_auc

KEYS = ["balanced_accuracy", "f1_idc", "roc_auc", "pr_auc", "sensitivity", "specificity"]


def reports(d, name):
    return {int(p.stem.rsplit("-", 1)[1]): json.loads(p.read_text()) for p in sorted(d.glob(f"{name}-*.json"))}


def ms(values):
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main():
    base, name, weights = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    alone = reports(base / "alone", name)
    ctx = {w: reports(base / f"context-{w}", name) for w in weights}
    first = ctx[weights[0]]
    print(f"weight {weights[0]}:\n")
    print("| fold | patches with a neighbour | BAC alone | BAC context | ROC AUC alone | ROC AUC context "
          "| PR AUC alone | PR AUC context | F1 context |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in sorted(alone):
        a, c = alone[k]["report"], first[k]["report"]
        print(f"| {k} | {first[k]['run']['context']['with_neighbours']:,} of {first[k]['run']['images']:,} "
              f"| {a['balanced_accuracy']:.3f} | {c['balanced_accuracy']:.3f} | {a['roc_auc']:.3f} "
              f"| {c['roc_auc']:.3f} | {a['pr_auc']:.3f} | {c['pr_auc']:.3f} | {c['f1_idc']:.3f} |")
    col = lambda rs, key: [r["report"][key] for r in rs.values()]
    print("| mean ± sd | | " + " | ".join(
        [ms(col(alone, "balanced_accuracy")), ms(col(first, "balanced_accuracy")), ms(col(alone, "roc_auc")),
         ms(col(first, "roc_auc")), ms(col(alone, "pr_auc")), ms(col(first, "pr_auc")), ms(col(first, "f1_idc"))]) + " |")
    print()
    for label, rs in [("alone", alone)] + [(f"context {w}", ctx[w]) for w in weights]:
        print(f"{label:<14} " + "  ".join(f"{key} {ms(col(rs, key))}" for key in KEYS))
    shared = Path(os.environ.get("IDC_SHARED_DATA", "../shared/data"))
    whole = {p.name for p in (shared / "idc-real").iterdir()} if (shared / "idc-real").is_dir() else set()
    print(f"\npooled over the folds, {len(whole)} whole patients of idc-real vs the others (BAC / ROC AUC):")
    for label, d in [("alone", "alone")] + [(f"context {w}", f"context-{w}") for w in weights]:
        rows = {}
        for k in alone:
            for row in load_rows(base / d / f"{name}-{k}.csv"):
                rows[row["path"]] = row
        cells = []
        for group in (True, False):
            sel = [r for r in rows.values() if (r["patient"] in whole) == group]
            labels = [int(r["label"]) for r in sel]
            probs = [float(r["probability"]) for r in sel]
            cells.append(f"{bac(labels, probs):.3f} / {roc_auc(labels, probs):.3f} ({len(sel)} patches)")
        print(f"{label:<14} whole {cells[0]}  partial {cells[1]}")


def load_rows(path):
    return list(csv.DictReader(open(path)))


if __name__ == "__main__":
    main()
