"""Releases as the model zoo delivers them: scripts/package_bundle.py, then `monai.bundle download` and
`download_large_files` from a local HTTP server, a corrupted large file rejected by its hash, and inference from
the downloaded copy with its inference.json alone (the weights were trained with quick.json's tiny network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import json
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
import torch
import yaml
from monai.apps.utils import HashCheckError
from monai.bundle import ConfigParser, download, download_large_files

from brainmvp_components.weights.release import package_bundle

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ["brainmvp_pretrain", "brainmvp_brats_seg", "brainmvp_adni_cls"]
QUICK_NETWORK = {
    "brainmvp_pretrain": ("preset", "tiny"),
    "brainmvp_brats_seg": ("network_def::encoder::_target_", "brainmvp_components.networks.uniformer_tiny"),
    "brainmvp_adni_cls": ("network_def::encoder::_target_", "brainmvp_components.networks.uniformer_tiny"),
}


def _fake_training_run(name: str, root: Path) -> Path:
    """What a quick training run leaves under its bundle_root: models/model.pt (tiny network), the encoder of the
    pre-training model, and templates (zero-initialised ones on a coarse atlas grid)."""
    from brainmvp_components.data.atlas import atlas_grid
    from brainmvp_components.networks.templates import ModalityTemplates

    configs = REPO / "bundles" / name / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "quick.json")])
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    models = root / "models"
    models.mkdir(parents=True)
    torch.save(network.state_dict(), models / "model.pt")
    if name == "brainmvp_pretrain":
        torch.save(network.encoder.state_dict(), models / "encoder.pt")
        network.templates.export_nifti(models / "templates", montage=False)
    else:
        shape, affine = atlas_grid(8.0)
        templates = ModalityTemplates(parser["input_modalities"], spatial_shape=shape, affine=affine)
        with torch.no_grad():
            templates.weight.uniform_(0, 1)
        templates.export_nifti(models / "templates", montage=False)
    return root


def _package_script():
    """scripts/package_bundle.py as a module, so its command line is tested without a second interpreter."""
    spec = importlib.util.spec_from_file_location("package_bundle", REPO / "scripts" / "package_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", BUNDLES)
def test_package_bakes_settings_hashes_and_zips(name, tmp_path):
    """Each bundle packages: quick.json's network in every config, large_files.yml hashes, the zoo's two zips."""
    trained = _fake_training_run(name, tmp_path / "trained")
    configs = REPO / "bundles" / name / "configs"
    release = package_bundle(
        REPO / "bundles" / name, trained, tmp_path / "out", "http://example.org/r",
        config_files=[configs / "train.json", configs / "quick.json"],
    )  # fmt: skip
    bundle = release.bundle_dir
    key, value = QUICK_NETWORK[name]
    for config in ("train.json", "inference.json"):
        assert ConfigParser(ConfigParser.load_config_file(str(bundle / "configs" / config)))[key] == value
    assert (bundle / "docs" / "data_license.txt").is_file() and (bundle / "LICENSE").is_file()
    listed = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert {e["path"] for e in listed} >= {"models/model.pt"}
    assert any(e["path"].startswith("models/templates/template_") for e in listed)
    for entry in listed:
        assert entry["hash_type"] == "sha256" and entry["hash_val"] == _sha256(bundle / entry["path"])
        assert entry["url"] == f"http://example.org/r/{entry['path']}"
    with zipfile.ZipFile(release.zip_path) as full, zipfile.ZipFile(release.nolarge_zip_path) as light:
        full_names, light_names = set(full.namelist()), set(light.namelist())
    assert all(n.startswith(f"{name}/") for n in full_names)
    assert {f"{name}/{e['path']}" for e in listed} <= full_names
    assert full_names - light_names == {f"{name}/{e['path']}" for e in listed}
    assert f"{name}/configs/inference.json" in light_names and f"{name}/large_files.yml" in light_names


def test_package_refuses_weights_that_do_not_load(tmp_path):
    """Packaging a quick-trained model with the default configs alone would ship weights that cannot load."""
    trained = _fake_training_run("brainmvp_brats_seg", tmp_path / "trained")
    with pytest.raises(ValueError, match="does not load into network_def"):
        package_bundle(REPO / "bundles" / "brainmvp_brats_seg", trained, tmp_path / "out", "http://example.org/r")


class _Server:
    """A static HTTP server on localhost in a thread, serving ``root``."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.mark.slow
def test_download_large_files_hash_check_and_inference(
    tmp_path, brats_cohort, subprocess_env, python_executable
):  # fmt: skip
    name = "brainmvp_brats_seg"
    trained = _fake_training_run(name, tmp_path / "trained")
    configs = REPO / "bundles" / name / "configs"
    served = tmp_path / "served"
    with _Server(served) as server:
        status = _package_script().main([
            "--bundle", str(REPO / "bundles" / name), "--trained", str(trained), "--out", str(served),
            "--url_base", f"{server.url}/{name}",
            "--config_file", str(configs / "train.json"), str(configs / "quick.json"),
        ])  # fmt: skip
        assert status == 0
        zip_name = f"{name}_v0.1.0_nolarge.zip"

        # 1. monai.bundle download (the API of `python -m monai.bundle download --name --url`) of the zip without
        # the large files: configs, no weights
        downloads = tmp_path / "downloads"
        download(name=name, url=f"{server.url}/{zip_name}", bundle_dir=str(downloads), progress=False)
        bundle = downloads / name
        assert (bundle / "configs" / "inference.json").is_file() and not (bundle / "models" / "model.pt").exists()

        # 2. a corrupted large file on the server is rejected by its hash and not kept
        corrupt_copy = tmp_path / "corrupt" / name
        shutil.copytree(bundle, corrupt_copy)
        bad_root = served / "bad"
        shutil.copytree(served / name / "models", bad_root / "models")
        with open(bad_root / "models" / "model.pt", "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        text = (corrupt_copy / "large_files.yml").read_text()
        (corrupt_copy / "large_files.yml").write_text(text.replace(f"{server.url}/{name}/", f"{server.url}/bad/"))
        with pytest.raises(HashCheckError):
            download_large_files(bundle_path=str(corrupt_copy))
        assert not (corrupt_copy / "models" / "model.pt").exists()

        # 3. the real large files download, each checked against large_files.yml
        download_large_files(bundle_path=str(bundle))
    listed = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    for entry in listed:
        assert _sha256(bundle / entry["path"]) == entry["hash_val"]

    # 4. inference from the downloaded copy, inference.json alone: quick.json's tiny network loads
    case = sorted(p for p in brats_cohort.iterdir() if p.is_dir())[0]
    data = tmp_path / "cases"
    shutil.copytree(case, data / case.name, ignore=shutil.ignore_patterns("*seg*"))
    output = tmp_path / "predictions"
    command = [
        python_executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle), "--dataset_dir", str(data), "--output_dir", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    assert "missing-modality imputation is off" not in result.stdout + result.stderr  # templates found in models/
    prediction = nib.load(output / f"{case.name}_seg.nii.gz")
    source = nib.load(next(case.glob("*_t1.nii.gz")))
    assert prediction.shape == source.shape
    assert json.loads((output / f"{case.name}_seg.json").read_text())
