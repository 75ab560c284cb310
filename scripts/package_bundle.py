"""Package a trained bundle as a model-zoo release: settings baked into the configs, weights and templates under
models/, large_files.yml with SHA-256 hashes, and the zoo's zip files (with and without the large files).

Example, after training with ``--bundle_root runs/seg`` and the configs train.json and quick.json::

    python scripts/package_bundle.py --bundle bundles/brainmvp_brats_seg --trained runs/seg \\
        --config_file bundles/brainmvp_brats_seg/configs/train.json bundles/brainmvp_brats_seg/configs/quick.json \\
        --url_base https://example.org/brainmvp/brainmvp_brats_seg --out release/

``--config_file`` and ``--override`` repeat what the training run was given, so that the release builds the
network the weights belong to; the command refuses to write a release whose weights do not load.
Upload ``release/<name>/models/`` so that ``<url_base>/models/model.pt`` serves the model, and publish the zips.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from brainmvp_components.weights.release import package_bundle


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--override takes KEY=VALUE (VALUE in JSON), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a plain string, e.g. a _target_


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="the bundle's source folder, e.g. bundles/brainmvp_brats_seg")
    parser.add_argument("--trained", required=True, help="bundle_root of the training run (holding models/model.pt)")
    parser.add_argument("--out", required=True, help="output folder of the release")
    parser.add_argument("--url_base", required=True, help="URL under which <url_base>/models/... will be served")
    parser.add_argument("--config_file", nargs="+", help="config files of the training run (default: train.json)")
    parser.add_argument(
        "--override", action="append", type=_override, default=[], metavar="KEY=VALUE",
        help="a --key value pair of the training run, e.g. spacing=[4,4,4]; repeatable",
    )  # fmt: skip
    parser.add_argument("--templates_dir", help="templates to ship instead of <trained>/models/templates")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    release = package_bundle(
        args.bundle,
        args.trained,
        args.out,
        args.url_base,
        config_files=args.config_file,
        overrides=dict(args.override),
        templates_dir=args.templates_dir,
    )
    print(f"bundle folder: {release.bundle_dir}")
    print(f"zip: {release.zip_path}")
    print(f"zip without large files: {release.nolarge_zip_path}")
    for entry in release.large_files:
        print(f"large file: {entry['path']} sha256 {entry['hash_val']} <- {entry['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
