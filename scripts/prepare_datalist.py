"""Verify a BraTS-style data set and write its datalist JSON (splits, nested label fractions).

Example::

    python scripts/prepare_datalist.py --data-dir /data/BraTS2021 --out /data/BraTS2021/datalist.json \\
        --val-fraction 0.2 --label-fractions 0.2,0.4,0.6,0.8 --seed 0

Exit status: 0 when the datalist was written, 1 when the data set has problems (nothing is written unless
``--skip-bad``), 2 for unusable arguments or a missing folder.
"""

from __future__ import annotations

import argparse
import logging
import sys

from brainmvp_components.data.datalist import build_datalist
from brainmvp_components.data.problems import DatasetIntegrityError
from brainmvp_components.data.splits import DEFAULT_LABEL_FRACTIONS

logger = logging.getLogger("prepare_datalist")


def _numbers(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from e

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="data set folder, one sub-folder per case")
    parser.add_argument("--out", required=True, help="datalist JSON to write (paths inside are relative to it)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of cases for validation")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="fraction of cases for test")
    parser.add_argument(
        "--label-fractions",
        type=_numbers(float),
        default=DEFAULT_LABEL_FRACTIONS,
        help="nested training subsets to store, comma-separated (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and subset shuffles")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad cases out (listed under 'excluded')")
    parser.add_argument(
        "--labels-csv", default=None, help="classification labels (case,label[,diagnosis]); default DATA_DIR/labels.csv"
    )
    parser.add_argument(
        "--label-values",
        type=_numbers(int),
        default=None,
        help="allowed segmentation values, e.g. 0,1,2,4 (default: either BraTS convention, not mixed)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        datalist = build_datalist(
            args.data_dir,
            args.out,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            label_fractions=args.label_fractions,
            seed=args.seed,
            skip_bad=args.skip_bad,
            labels_csv=args.labels_csv,
            label_values=args.label_values,
        )
    except DatasetIntegrityError as e:
        logger.error("%s", e)
        logger.error("nothing written; fix the problems above or pass --skip-bad to leave the bad cases out")
        return 1
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 2
    for excluded in datalist["excluded"]:
        logger.warning("excluded case %r: %d problem(s)", excluded["case"], len(excluded["problems"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
