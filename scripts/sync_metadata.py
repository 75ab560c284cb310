"""Keep the version fields of every bundle's ``configs/metadata.json`` in step with ``requirements.txt``.

``requirements.txt`` is the one source: ``monai_version`` and ``pytorch_version`` are its ``==`` pins,
``numpy_version`` and ``required_packages_version`` name the packages it lists (MONAI's extras included, e.g.
``monai[ignite]`` -> ``pytorch-ignite``) plus the project's own ``brainmvp`` package (version from
``pyproject.toml``). A package pinned with ``==`` gets its pin; any other gets the version installed in the
running environment, which must satisfy the requirement's specifier.

Usage::

    python scripts/sync_metadata.py            # rewrite the version fields of every bundle's metadata.json
    python scripts/sync_metadata.py --check    # exit 1 and list every field that disagrees with the requirements

``--check`` needs no particular environment: a field agrees when it satisfies the requirement's specifier (and
equals an ``==`` pin), so it does not fail because another machine has another patch release installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGE = "brainmvp"
TOP_LEVEL_FIELDS = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
"""Packages with a metadata field of their own (the model zoo's names for them)."""

MONAI_EXTRAS = {"ignite": "pytorch-ignite"}
"""MONAI extras whose distribution has another name; every other extra is installed under its own name."""


def read_requirements(path: str | os.PathLike) -> dict[str, Requirement]:
    """The requirements of ``path`` by canonical name, following ``-r`` includes; comments and options skipped.

    MONAI's extras (``monai[nibabel,ignite]``) add one requirement each, without a version constraint.

    Raises:
        ValueError: a line that is not a valid requirement; the message names the file and line.
    """
    path = Path(path)
    found: dict[str, Requirement] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            found.update(read_requirements(path.parent / line.split(maxsplit=1)[1]))
            continue
        if line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except ValueError as err:
            raise ValueError(f"{path}:{number}: not a requirement: {raw!r} ({err})") from err
        found[canonicalize_name(requirement.name)] = requirement
        if canonicalize_name(requirement.name) == "monai":
            for extra in sorted(requirement.extras):
                name = canonicalize_name(MONAI_EXTRAS.get(extra, extra))
                found.setdefault(name, Requirement(name))
    return found


def project_version(pyproject: str | os.PathLike = REPO_ROOT / "pyproject.toml") -> str:
    """The ``[project] version`` of ``pyproject``."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', Path(pyproject).read_text(), flags=re.M)
    if match is None:
        raise ValueError(f"{pyproject}: no 'version = \"...\"' line in [project]")
    return match.group(1)


def _pin(requirement: Requirement) -> str | None:
    pins = [s.version for s in requirement.specifier if s.operator == "=="]
    return pins[0] if len(pins) == 1 else None


def _version_for(requirement: Requirement) -> str:
    """The ``==`` pin, else the installed version (which must satisfy the requirement)."""
    pinned = _pin(requirement)
    if pinned is not None:
        return pinned
    try:
        installed = importlib_metadata.version(requirement.name)
    except importlib_metadata.PackageNotFoundError as err:
        raise RuntimeError(f"{requirement.name} is required but not installed: install the requirements first") from err
    if not requirement.specifier.contains(installed, prereleases=True):
        raise RuntimeError(f"installed {requirement.name} {installed} does not satisfy requirement '{requirement}'")
    return installed


def expected_versions(requirements: Mapping[str, Requirement], brainmvp_version: str) -> dict:
    """The version fields of a metadata.json as ``requirements`` and the environment give them."""
    fields: dict = {}
    packages: dict[str, str] = {}
    for name, requirement in sorted(requirements.items()):
        if name in TOP_LEVEL_FIELDS:
            fields[TOP_LEVEL_FIELDS[name]] = _version_for(requirement)
        else:
            packages[name] = _version_for(requirement)
    missing = [TOP_LEVEL_FIELDS[n] for n in TOP_LEVEL_FIELDS if TOP_LEVEL_FIELDS[n] not in fields]
    if missing:
        raise RuntimeError(f"requirements name no package for the metadata fields {missing}")
    packages[PROJECT_PACKAGE] = brainmvp_version
    fields["required_packages_version"] = packages
    return fields


def metadata_drift(
    metadata: Mapping, requirements: Mapping[str, Requirement], brainmvp_version: str, source: str = "metadata"
) -> list[str]:
    """Every way ``metadata``'s version fields disagree with ``requirements``; empty when they agree.

    A field agrees when its version satisfies the requirement's specifier (so an ``==`` pin must be matched
    exactly); ``required_packages_version`` must name exactly the required packages and ``brainmvp``.
    """
    problems: list[str] = []

    def check(label: str, value: object, requirement: Requirement) -> None:
        if not isinstance(value, str):
            problems.append(f"{source}: {label} is {value!r}, expected a version satisfying '{requirement}'")
            return
        try:
            ok = SpecifierSet(str(requirement.specifier)).contains(Version(value), prereleases=True)
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"{source}: {label} is {value}, which does not satisfy requirement '{requirement}'")

    for name, field in TOP_LEVEL_FIELDS.items():
        check(field, metadata.get(field), requirements[name])
    declared = {canonicalize_name(k): v for k, v in (metadata.get("required_packages_version") or {}).items()}
    wanted = {n for n in requirements if n not in TOP_LEVEL_FIELDS}
    for name in sorted(wanted - set(declared)):
        problems.append(f"{source}: required_packages_version lacks {name}")
    for name in sorted(set(declared) - wanted - {PROJECT_PACKAGE}):
        problems.append(f"{source}: required_packages_version lists {name}, which the requirements do not name")
    for name in sorted(wanted & set(declared)):
        check(f"required_packages_version[{name}]", declared[name], requirements[name])
    if declared.get(PROJECT_PACKAGE) != brainmvp_version:
        problems.append(
            f"{source}: required_packages_version[{PROJECT_PACKAGE}] is {declared.get(PROJECT_PACKAGE)!r}, "
            f"pyproject.toml says {brainmvp_version}"
        )
    return problems


_SCALAR = r'(?:-?[0-9.]+|"[^"\n]{0,24}")'
_SHORT_LIST = re.compile(rf"\[\s*({_SCALAR}(?:,\s*{_SCALAR})*)\s*\]")


def metadata_files(bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> list[Path]:
    """``configs/metadata.json`` of every bundle under ``bundles_dir``."""
    return sorted(Path(bundles_dir).glob("*/configs/metadata.json"))


def write_versions(path: str | os.PathLike, fields: Mapping) -> bool:
    """Set ``fields`` in the metadata file ``path`` (atomically, key order kept); ``True`` when it changed."""
    path = Path(path)
    text = path.read_text()
    metadata = json.loads(text)
    updated = {**metadata, **fields}
    if updated == metadata:
        return False
    new_text = json.dumps(updated, indent=4, ensure_ascii=False) + "\n"
    # keep the file's short lists on one line, as written by hand ("spatial_shape": [96, 96, 96])
    new_text = _SHORT_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", new_text)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new_text)
    os.replace(tmp, path)
    return True


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of rewriting")
    parser.add_argument("--requirements", default=str(REPO_ROOT / "requirements.txt"))
    parser.add_argument("--bundles-dir", default=str(REPO_ROOT / "bundles"))
    args = parser.parse_args(None if argv is None else list(argv))
    requirements = read_requirements(args.requirements)
    version = project_version()
    files = metadata_files(args.bundles_dir)
    if not files:
        print(f"no bundles/*/configs/metadata.json under {args.bundles_dir}", file=sys.stderr)
        return 1
    if args.check:
        problems = [p for f in files for p in metadata_drift(json.loads(f.read_text()), requirements, version, str(f))]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    fields = expected_versions(requirements, version)
    for f in files:
        print(f"{'updated' if write_versions(f, fields) else 'unchanged'}: {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
