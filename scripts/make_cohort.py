"""Generate the embedded synthetic mpMRI cohort (real MNI anatomy, MR signal equations) in BraTS layout.

Examples::

    python scripts/make_cohort.py --out data/brats_syn --kind brats --subjects 8 --preview
    python scripts/make_cohort.py --out data/pretrain_syn --kind pretrain --subjects 32 --missing-rate 0.4
    python scripts/make_cohort.py --out data/adni_syn --kind adni --subjects 40 --spacing 1
    python scripts/make_cohort.py --out data/pool --kind pretrain --subjects 200 --sites A,B,C,D --missing-rate 0.1

Exit status: 0 on success, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from brainmvp_components.data.cohort import COHORT_KINDS, LABEL_CONVENTIONS, SITES, make_cohort


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--kind", required=True, choices=COHORT_KINDS, help="which cohort to generate")
    parser.add_argument("--subjects", required=True, type=int, help="number of subjects")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (same seed, same bytes)")
    parser.add_argument("--spacing", type=float, default=2.0, choices=(1.0, 2.0), help="grid spacing in mm")
    parser.add_argument(
        "--missing-rate", type=float, default=0.3, help="pretrain: probability that each modality is absent"
    )
    parser.add_argument(
        "--label-convention",
        default="brats2021",
        choices=LABEL_CONVENTIONS,
        help="file names and enhancing label: brats2021 (t1ce, label 4) or brats2023 (t1n/t1c/t2w/t2f, label 3)",
    )
    parser.add_argument(
        "--sites",
        default=None,
        help="comma-separated acquisition sites (docs/cohort.md), assigned round-robin, e.g. A,B,C,D "
        f"(known: {','.join(SITES)}; default: the nominal protocol)",
    )
    parser.add_argument("--preview", action="store_true", help="also write one PNG per case to OUT/.previews")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cases = make_cohort(
            args.out,
            args.kind,
            args.subjects,
            seed=args.seed,
            spacing=args.spacing,
            missing_rate=args.missing_rate,
            label_convention=args.label_convention,
            preview=args.preview,
            sites=[s.strip() for s in args.sites.split(",") if s.strip()] if args.sites else None,
        )
    except (ValueError, NotADirectoryError) as e:
        logging.getLogger("make_cohort").error("%s", e)
        return 2
    print(f"wrote {len(cases)} {args.kind} case(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
