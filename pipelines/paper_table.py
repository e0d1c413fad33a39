"""Print a run's overall IoU per split next to the original DMN's (the numbers of its README and
released weights). Usage: python pipelines/paper_table.py DATASET RUN_DIR SPLIT [SPLIT ...]"""

import json
import sys
from pathlib import Path

ORIGINAL = {  # overall IoU (%) of the original DMN, from its README / released weights
    "referit": {"test": 52.81},
    "unc": {"val": 49.78, "testA": 54.84, "testB": 45.20},
    "unc+": {"val": 38.88, "testA": 44.25, "testB": 32.49},
    "gref": {"val": 37.64},
}


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    dataset, run, splits = argv[0], Path(argv[1]), argv[2:]
    print(f"| {dataset} split | ours: overall IoU @0.5 | ours: best of sweep* | original DMN |")
    print("|---|---|---|---|")
    for split in splits:
        path = run / "eval" / split / "metrics.json"
        if not path.is_file():
            print(f"error: {path} not found (did dmn-eval run?)", file=sys.stderr)
            return 1
        m = json.loads(path.read_text())
        ours = 100 * m["fixed"]["overall_iou"]
        best = m["sweep"]["best"]
        orig = ORIGINAL.get(dataset, {}).get(split)
        print(f"| {split} | {ours:.2f} | {100 * best['overall_iou']:.2f} (threshold {best['threshold']:g}) | "
              f"{'—' if orig is None else f'{orig:.2f}'} |")
    print("* threshold chosen on the evaluated split itself (optimistic), as the original code did.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
