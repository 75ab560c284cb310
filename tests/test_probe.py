"""Linear probes of frozen encoders: the stage-resolution read-out equals the upsampled one, a probe finds what the
features hold, and the command line probes a real cohort."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainmvp_components.data.datalist import build_datalist
from brainmvp_components.studies.probe import (
    EncoderFeatures,
    LinearProbe,
    ProbeCase,
    _probe_logits,
    _sample_maps,
    fit_linear_probe,
    load_probe_cases,
    load_single_channel_encoder,
    probe_encoders,
    sample_probe_voxels,
    stage_maps,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _upsampled(maps: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
    """``(voxels, F)``: every map upsampled by its power-of-two factor and cut to ``shape``."""
    full = []
    for m in maps:
        factor = [int(2 ** np.ceil(np.log2(g / s))) for s, g in zip(m.shape[1:], shape)]
        up = m if factor == [1, 1, 1] else F.interpolate(m[None], scale_factor=factor, mode="trilinear")[0]
        full.append(up[:, : shape[0], : shape[1], : shape[2]])
    return torch.cat(full).flatten(1).T.numpy()


def test_stage_resolution_read_out_equals_upsampled_features():
    torch.manual_seed(0)
    shape = (40, 36, 20)  # padded to 48 x 48 x 32 for the encoder maps
    maps = [torch.rand(3, *shape), torch.rand(5, 24, 24, 16), torch.rand(2, 6, 6, 4)]
    reference = _upsampled(maps, shape)
    indices = np.random.default_rng(0).choice(int(np.prod(shape)), 500, replace=False)
    np.testing.assert_allclose(_sample_maps(maps, indices, shape), reference[indices], atol=1e-5)
    rng = np.random.default_rng(1)
    probe = LinearProbe(rng.random(10), rng.random(10) + 0.5, rng.normal(size=(10, 3)), rng.normal(size=3))
    logits = _probe_logits(probe, maps, shape)
    np.testing.assert_allclose(logits.flatten(1).T.numpy(), probe.logits(reference), atol=1e-4)


def _case(seed: int, size: int = 24) -> ProbeCase:
    """A head (a ball) whose 'tumour' (a smaller ball inside it) is bright in channel 1 only."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    head = ((grid - size / 2) ** 2).sum(0) < (0.45 * size) ** 2
    centre = size / 2 + rng.integers(-3, 4, size=3)
    tumour = ((grid - centre[:, None, None, None]) ** 2).sum(0) < 16
    image = np.where(head, 0.5, 0.0)[None].repeat(2, axis=0) + 0.05 * rng.normal(size=(2, size, size, size))
    image[1][tumour] += 0.4
    image = np.clip(image, 0, 1) * head
    regions = np.stack([tumour & False, tumour, tumour & False])
    return ProbeCase(f"case{seed}", torch.as_tensor(image, dtype=torch.float32), torch.as_tensor(regions),
                     torch.as_tensor(head))  # fmt: skip


def test_probe_finds_the_region_its_features_hold():
    training, tests = [_case(0), _case(1)], {"test": [_case(2), _case(3)]}
    (row,) = probe_encoders({"intensities": None}, training, tests, per_class=300)
    assert row["encoder"] == "intensities" and row["cases"] == 2 and row["features"] == 2
    assert row["dice_wt"] > 0.85  # the tumour is one bright channel: a linear read-out finds it
    assert row["dice_tc"] == row["dice_et"] == 1.0  # absent in reference and prediction alike
    # sampling: up to per_class of each class, none outside the head
    idx = sample_probe_voxels(training[0], 50, np.random.default_rng(0))
    wt = training[0].regions[1].flatten().numpy()[idx]
    assert wt.sum() == 50 and (~wt).sum() == 50 and training[0].head.flatten().numpy()[idx].all()


def test_constant_region_gets_a_constant_probe():
    probe = fit_linear_probe(np.random.default_rng(0).normal(size=(20, 4)), np.zeros((20, 3), dtype=bool))
    assert (probe.logits(np.ones((5, 4))) < 0).all()


def test_encoder_maps_and_weights(tmp_path):
    encoder = load_single_channel_encoder(None, "tiny", seed=3)
    case = _case(0, size=20)
    maps = stage_maps(EncoderFeatures(encoder, roi_size=(16, 16, 16)), case)
    # four stages, two modalities stacked, on the grid padded to 32
    assert [tuple(m.shape) for m in maps] == [(2 * c, 32 // 2**i, 32 // 2**i, 32 // 2**i)
                                               for i, c in enumerate(encoder.out_channels, start=1)]  # fmt: skip
    path = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), path)
    loaded = load_single_channel_encoder(path, "tiny")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values()))
    checkpoint = tmp_path / "checkpoint_epoch=3.pt"
    torch.save({"network": {f"encoder.{k}": v for k, v in encoder.state_dict().items()} | {"decoder.w": 0}}, checkpoint)
    from_checkpoint = load_single_channel_encoder(checkpoint, "tiny")
    assert all(torch.equal(a, b) for a, b in zip(from_checkpoint.state_dict().values(), encoder.state_dict().values()))
    with pytest.raises(ValueError, match="encoder.pt is not a single-channel UniFormer-small"):
        load_single_channel_encoder(path, "small")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_single_channel_encoder(tmp_path / "missing.pt")


def _script():
    spec = importlib.util.spec_from_file_location("probe_encoder_script", REPO_ROOT / "scripts" / "probe_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_command_on_a_cohort(brats_cohort, tmp_path):
    path = tmp_path / "datalist.json"
    build_datalist(brats_cohort, path, val_fraction=0.0, test_fraction=0.5, seed=0)
    cases = load_probe_cases(path, "test")
    assert len(cases) == 3 and cases[0].image.shape[0] == 4 and cases[0].regions.shape[0] == 3
    assert cases[0].regions[1].any() and (cases[0].regions[0] <= cases[0].regions[1]).all()  # TC within WT
    encoder = load_single_channel_encoder(None, "tiny", seed=0)
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    out = tmp_path / "probe.csv"
    code = _script().main(
        ["--datalist", str(path), "--encoder", "intensities", "--encoder", f"saved={tmp_path / 'encoder.pt'}",
         "--encoder", "random", "--per-class", "200", "--seeds", "2", "--roi", "64", "--out", str(out)]  # fmt: skip
    )
    assert code == 0
    assert torch.is_grad_enabled()  # the command leaves autograd as it found it (the suite runs it in-process)
    rows = list(csv.DictReader(out.open()))
    assert [(r["encoder"], r["seed"]) for r in rows] == [
        (e, s) for s in ("0", "1") for e in ("intensities", "saved", "random")
    ]
    assert all(0.0 <= float(r["dice_mean"]) <= 1.0 and r["labelled"] == "3" for r in rows)
    by = {(r["encoder"], r["seed"]): float(r["dice_wt"]) for r in rows}
    assert by[("intensities", "0")] > 0.3  # real tumours, found from four intensities
    # the saved encoder is random encoder seed 0, so their probes agree at seed 0 and differ at seed 1
    assert by[("saved", "0")] == pytest.approx(by[("random", "0")])
    assert json.loads(path.read_text())["test"]
