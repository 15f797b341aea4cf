"""Per-fold metrics of each model and of their mean probability (bench/cv_ensemble.sh).

Usage: python3 bench/cv_ensemble.py PREFIX...   (PREFIX-<fold>.csv: `runtime eval --predictions`)
Prints, for each model alone and for the ensemble, mean ± sd over folds of balanced accuracy at
0.5 and ROC AUC, and the per-fold values.
"""
import csv
import statistics
import sys
from pathlib import Path


def load(path):
    return {r["path"]: (int(r["label"]), float(r["probability"])) for r in csv.DictReader(open(path))}


def roc_auc(labels, probs):
    """Mann-Whitney U with mid-ranks for ties."""
    order = sorted(range(len(probs)), key=probs.__getitem__)
    ranks = [0.0] * len(probs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probs[order[j + 1]] == probs[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    return (sum(r for r, y in zip(ranks, labels) if y) - pos * (pos + 1) / 2) / (pos * neg)


def bac(labels, probs, t=0.5):
    tp = sum(1 for y, p in zip(labels, probs) if y and p >= t)
    tn = sum(1 for y, p in zip(labels, probs) if not y and p < t)
    pos = sum(labels)
    return (tp / pos + tn / (len(labels) - pos)) / 2


def main():
    prefixes = sys.argv[1:]
    folds = sorted({int(p.stem.rsplit("-", 1)[1]) for pre in prefixes for p in Path(pre).parent.glob(Path(pre).name + "-*.csv")})
    rows = {name: ([], []) for name in [Path(p).name for p in prefixes] + ["ensemble"]}
    for k in folds:
        models = [load(f"{pre}-{k}.csv") for pre in prefixes]
        paths = sorted(models[0])
        assert all(sorted(m) == paths for m in models), f"fold {k}: the models saw different patches"
        labels = [models[0][p][0] for p in paths]
        each = [[m[p][1] for p in paths] for m in models]
        mean = [sum(v) / len(v) for v in zip(*each)]
        for name, probs in zip(list(rows), each + [mean]):
            rows[name][0].append(bac(labels, probs))
            rows[name][1].append(roc_auc(labels, probs))
    for name, (b, a) in rows.items():
        print(f"{name:<24} BAC {statistics.mean(b):.3f} ± {statistics.stdev(b):.3f}  ROC AUC "
              f"{statistics.mean(a):.3f} ± {statistics.stdev(a):.3f}  per fold BAC "
              + " ".join(f"{v:.3f}" for v in b))


if __name__ == "__main__":
    main()
