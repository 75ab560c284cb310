"""The MONAI model zoo's bundle checks, as its CI runs them, on every bundle of the project.

The zoo's CI (``ci/verify_bundle.py`` and ``ci/unit_tests`` of Project-MONAI/model-zoo) checks the required files,
validates ``metadata.json`` against MONAI's metadata schema, initialises each workflow a bundle ships and checks its
properties (MONAI's ``MetaProperties`` with ``TrainProperties`` or ``InferProperties``; ``evaluate.json`` merged onto
``train.json``, as the zoo's unit tests do), runs ``verify_net_in_out`` and exports the network to TorchScript with
``ckpt_export``. The same MONAI functions run here, offline: the schema is a copy in ``tests/data`` (its URL cannot
be downloaded in CI), the networks are quick.json's tiny ones and the data the session's tiny cohorts.

All three networks script (``torch.jit.script``): UniUNet, the classifier, and the pre-training model, whose
forward returns ``(reconstruction, deepest features)``; ``verify_net_in_out`` checks its reconstruction through
``extra_forward_args={"return_features": False}``, since the zoo's check reads ``output.shape`` of one tensor.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle.properties import InferProperties, MetaProperties, TrainProperties

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"
BUNDLES = ["brainmvp_pretrain", "brainmvp_brats_seg", "brainmvp_adni_cls"]
REQUIRED = ["configs/metadata.json", "configs/inference.json", "docs/README.md", "docs/data_license.txt", "LICENSE"]
KINDS = (("train", ["train.json"]), ("train", ["train.json", "evaluate.json"]), ("infer", ["inference.json"]))
WORKFLOWS = [(bundle, kind, files) for bundle in BUNDLES for kind, files in KINDS]
"""(bundle, workflow type, config files; quick.json goes after the first)"""
COHORT = {
    "brainmvp_pretrain": "pretrain_cohort",
    "brainmvp_brats_seg": "brats_cohort",
    "brainmvp_adni_cls": "adni_cohort",
}
FORWARD_ARGS = {"brainmvp_pretrain": {"return_features": False}}


def _configs(bundle_dir: Path, files: list[str]) -> list[str]:
    """``files`` with quick.json after the first (the workflow's own config), as the bundle tests merge them."""
    names = [files[0], "quick.json", *files[1:]]
    return [str(bundle_dir / "configs" / name) for name in names]


def _save_weights(bundle_dir: Path, config_files: list[str]) -> Path:
    """``models/model.pt`` of the network the configs define (the zoo's CI makes such weights too)."""
    parser = ConfigParser()
    parser.read_config(config_files)
    parser["bundle_root"] = str(bundle_dir)
    path = bundle_dir / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.fixture
def bundle_copy(tmp_path):
    """A copy of a bundle's source folder, so workflows write nothing into the working tree."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(REPO / "bundles" / name, target, ignore=shutil.ignore_patterns("models", "eval", "data"))
        return target

    return copy


@pytest.mark.parametrize("name", BUNDLES)
def test_required_files(name):
    bundle = REPO / "bundles" / name
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    assert not missing, f"{bundle} lacks {missing}"
    assert (bundle / "models" / "model.pt").is_file() or (bundle / "large_files.yml").is_file()
    parser = ConfigParser()
    parser.read_config(str(bundle / "large_files.yml"))
    for entry in parser["large_files"]:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"}, entry
        assert entry["path"].startswith("models/") and entry["url"].startswith("https://")


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_against_monai_schema(name, tmp_path):
    """MONAI's verify_metadata with the schema its URL names, pre-placed where it would be downloaded."""
    meta_file = REPO / "bundles" / name / "configs" / "metadata.json"
    assert json.loads(meta_file.read_text())["schema"].endswith("/" + SCHEMA.name)
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    metadata = json.loads(meta_file.read_text())
    assert metadata["version"] in metadata["changelog"]


def test_schema_rejects_incomplete_metadata(tmp_path):
    """The local schema copy is the real one: metadata without numpy_version fails."""
    metadata = json.loads((REPO / "bundles" / "brainmvp_brats_seg" / "configs" / "metadata.json").read_text())
    del metadata["numpy_version"]
    meta_file = tmp_path / "metadata.json"
    meta_file.write_text(json.dumps(metadata))
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    with pytest.raises(ValueError, match="numpy_version"):
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))


def test_metadata_versions_match_requirements():
    """Every metadata.json agrees with requirements.txt (scripts/sync_metadata.py rewrites them from it)."""
    spec = importlib.util.spec_from_file_location("sync_metadata", REPO / "scripts" / "sync_metadata.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    requirements = sync.read_requirements(REPO / "requirements.txt")
    version = sync.project_version(REPO / "pyproject.toml")
    problems = [
        p
        for f in sync.metadata_files(REPO / "bundles")
        for p in sync.metadata_drift(json.loads(f.read_text()), requirements, version, str(f.relative_to(REPO)))
    ]
    assert not problems, "run python scripts/sync_metadata.py:\n" + "\n".join(problems)
    drifted = {**json.loads((REPO / "bundles" / "brainmvp_pretrain" / "configs" / "metadata.json").read_text())}
    drifted["numpy_version"] = "2.4.6"
    assert sync.metadata_drift(drifted, requirements, version)  # the drift the test guards against


@pytest.mark.parametrize(("name", "kind", "files"), WORKFLOWS, ids=lambda v: "+".join(v) if isinstance(v, list) else v)
def test_check_properties(name, kind, files, bundle_copy, request):
    bundle = bundle_copy(name)
    configs = _configs(bundle, files)
    if files != ["train.json"]:  # evaluation and inference load models/model.pt
        _save_weights(bundle, _configs(bundle, ["inference.json" if kind == "infer" else "train.json"]))
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type=kind,
        bundle_root=str(bundle),
        dataset_dir=str(request.getfixturevalue(COHORT[name])),
        num_workers=0,
    )
    workflow.properties = {**MetaProperties, **(TrainProperties if kind == "train" else InferProperties)}
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out_and_torchscript(name, bundle_copy, tmp_path):
    bundle = bundle_copy(name)
    configs = _configs(bundle, ["inference.json"])
    meta_file = str(bundle / "configs" / "metadata.json")
    extra = FORWARD_ARGS.get(name, {})
    verify_net_in_out(
        net_id="network_def", meta_file=meta_file, config_file=configs, device="cpu", n=2, extra_forward_args=extra
    )
    weights = _save_weights(bundle, configs)
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(exported), ckpt_file=str(weights), meta_file=meta_file,
        config_file=configs, bundle_root=str(bundle),
    )  # fmt: skip
    scripted = torch.jit.load(str(exported))
    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(weights, weights_only=True))
    channels = json.loads(Path(meta_file).read_text())["network_data_format"]["inputs"]["image"]["num_channels"]
    x = torch.rand(1, channels, 32, 32, 32)
    with torch.no_grad():
        expected, got = network.eval()(x, **extra), scripted(x, **extra)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_packaged_release_passes_with_inference_json_alone(tmp_path):
    """A release of quick-trained weights passes the zoo's checks with its own configs, no quick.json."""
    from brainmvp_components.weights.release import package_bundle

    name = "brainmvp_brats_seg"
    source = REPO / "bundles" / name
    trained = tmp_path / "trained"
    _save_weights(trained, _configs(source, ["train.json"]))
    configs = [source / "configs" / "train.json", source / "configs" / "quick.json"]
    release = package_bundle(source, trained, tmp_path / "out", "https://example.org/r", config_files=configs)
    bundle = release.bundle_dir
    assert all((bundle / f).is_file() for f in [*REQUIRED, "models/model.pt", "large_files.yml"])
    inference = str(bundle / "configs" / "inference.json")
    meta_file = str(bundle / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=inference, device="cpu", n=2)
    ckpt_export(
        net_id="network_def", filepath=str(tmp_path / "model.ts"), meta_file=meta_file, config_file=inference,
        bundle_root=str(bundle),
    )  # fmt: skip
    assert torch.jit.load(str(tmp_path / "model.ts")) is not None


@pytest.mark.slow
def test_pretrain_inference_writes_features_and_preview(bundle_copy, pretrain_cohort, tmp_path):
    """brainmvp_pretrain's inference.json: per case, pooled per-stage encoder features and the masked
    reconstruction preview, named by the case and written atomically."""
    bundle = bundle_copy("brainmvp_pretrain")
    configs = _configs(bundle, ["inference.json"])
    _save_weights(bundle, configs)
    output = tmp_path / "features"
    workflow = ConfigWorkflow(
        config_file=configs, workflow_type="infer", bundle_root=str(bundle), dataset_dir=str(pretrain_cohort),
        output_dir=str(output), meta_file=str(bundle / "configs" / "metadata.json"),
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    cases = sorted(p.name for p in pretrain_cohort.iterdir() if p.is_dir())
    assert sorted(p.name[: -len("_features.npz")] for p in output.glob("*_features.npz")) == cases
    from brainmvp_components.data.inference_inputs import inference_entries
    from brainmvp_components.data.modalities import canonical_modalities

    entries = {e["case"]: e for e in inference_entries(None, pretrain_cohort)[0]}
    case = max(cases, key=lambda c: len(entries[c]["modalities"]))
    features = np.load(output / f"{case}_features.npz")
    assert features["stage_widths"].tolist() == [16, 32, 64, 128]  # quick.json's tiny UniFormer
    assert features["features"].shape == (len(features["modalities"]), 240)
    assert np.isfinite(features["features"]).all()
    assert features["modalities"].tolist() == list(canonical_modalities(entries[case]["modalities"]))
    preview = json.loads((output / f"{case}_reconstruction.json").read_text())
    assert {"mse_template_view", "mse_cross_modal_view", "mse_mean_fill"} <= set(preview)
    assert (output / f"{case}_reconstruction.png").stat().st_size > 0
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no temporary file left
