"""The label-efficiency runner: study files, plan, results file, report, site splits, and toy studies end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainmvp_components.studies.label_efficiency import (
    DEFAULT_STUDY,
    ENCODER_USES,
    INITIALISATIONS,
    TASKS,
    cli_value,
    load_study,
    plan_runs,
    run_order,
)
from brainmvp_components.studies.results import ResultsFile, plot_label_efficiency, results_table, summarise
from brainmvp_components.studies.runner import Study

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDIES = REPO_ROOT / "scripts" / "studies"


def _script():
    spec = importlib.util.spec_from_file_location(
        "label_efficiency_script", REPO_ROOT / "scripts" / "label_efficiency.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(init: str, fraction: float, seed: int, dice: float, site: str = "in", encoder: str = "finetune") -> dict:
    metrics = {f"dice_{r}": dice for r in ("tc", "wt", "et")}
    metrics |= {"dice_mean": dice, "hd95_tc": 5.0, "hd95_wt": 4.0, "hd95_et": float("inf")}
    tail = {"test_cases": 2, "training_cases": 4, "seconds": 1.0, "pretrain_seconds": float("nan")}
    return {
        "initialisation": init,
        "labelled": fraction,
        "test_site": site,
        "encoder": encoder,
        "seed": seed,
        **metrics,
        **tail,
        "finished": "now",
        "command": "x",
    }


def test_study_files_load_and_match_the_defaults():
    assert load_study(STUDIES / "default.yaml") == load_study(None)
    study = load_study(None)
    assert study["fractions"] == [0.1, 0.2, 0.4, 1.0] and study["seeds"] == [0, 1, 2]
    assert [i.name for i in study["initialisations"]] == list(INITIALISATIONS) == DEFAULT_STUDY["initialisations"]
    small = load_study(STUDIES / "cpu_small.yaml", workers=1)
    assert small["workers"] == 1 and [i.name for i in small["initialisations"]] == ["scratch", "mae", "brainmvp"]
    pretrains, finetunes = plan_runs(small)
    assert [p.initialisation.name for p in pretrains] == ["mae", "brainmvp"]  # scratch needs no pre-training
    assert len(finetunes) == 6
    assert all((f.pretrain is None) == (f.initialisation.name == "scratch") for f in finetunes)
    # the pool study: the sizes its file's comments account for
    pool = {task: load_study(STUDIES / "label_efficiency_pool.yaml", task=task) for task in TASKS}
    pretrains, segmentation = plan_runs(pool["segmentation"])
    assert len(pretrains) == 5 and len(segmentation) == 63 and len(plan_runs(pool["classification"])[1]) == 36
    assert {f.labelled for f in segmentation if f.initialisation.name == "brainmvp-no-cl"} == {2.0}
    assert {f.labelled for f in segmentation if f.encoder == "frozen"} == {2.0}
    assert {f.initialisation.name for f in segmentation if f.encoder == "frozen"} == set(INITIALISATIONS)
    classification = plan_runs(pool["classification"])[1]
    assert {f.initialisation.name for f in classification} == {"scratch", "mae", "brainmvp"}  # per-task only_at
    assert {(f.labelled, f.encoder) for f in classification} == {(a, e) for a in (2.0, 8.0) for e in ENCODER_USES}
    # one pre-training (seed 0) per initialisation serves the three fine-tuning seeds
    assert {p.seed for p in pretrains} == {0} and {f.seed for f in segmentation} == {0, 1, 2}
    assert all(f.pretrain.seed == 0 for f in segmentation if f.pretrain is not None)
    # started seed by seed, ablations after the main comparison of their seed, each pre-training before its uses
    order = run_order(pretrains, segmentation, pool["segmentation"]["only_at"])
    assert sorted(map(id, order)) == sorted(map(id, [*pretrains, *segmentation]))
    assert [r.seed for r in order] == sorted(r.seed for r in order)
    position = {id(r): i for i, r in enumerate(order)}
    assert all(position[id(f.pretrain)] < position[id(f)] for f in segmentation if f.pretrain is not None)
    seed0 = [r.initialisation.name for r in order if r.seed == 0]
    first_ablation = min(i for i, name in enumerate(seed0) if name.startswith("brainmvp-no-"))
    assert set(seed0[:first_ablation]) == {"scratch", "mae", "brainmvp"} and len(seed0[:first_ablation]) == 17
    # a count of pre-training seeds takes the first fine-tuning seeds
    assert load_study(None, seeds=[3, 4, 5], pretrain_seeds=2)["pretrain_seeds"] == [3, 4]


@pytest.mark.parametrize(
    "text, match",
    [
        ("fractions: [0.0, 1.0]", "fractions"),
        ("initialisations: [scratch, simclr]", "unknown initialisation"),
        ("tasks: segmentation", "unknown setting"),
        ("seeds: []", "seeds"),
        ("pretrain_seeds: [1, 1]", "pretrain_seeds"),
        ("templates: maybe", "templates"),
    ],
)
def test_bad_study_files_are_rejected(tmp_path, text, match):
    path = tmp_path / "study.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=match):
        load_study(path)


def test_extra_initialisations_and_command_values(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("initialisations: [scratch, md1]\nextra_initialisations: {md1: {md_weight: 1.0}}\n")
    study = load_study(path)
    assert study["initialisations"][1].pretrain_overrides == {"md_weight": 1.0}
    assert study["initialisations"][1].templates
    # booleans as Python literals, None as an expression (a plain None is dropped by the bundle command line)
    assert [cli_value(v) for v in (True, None, [32, 32], ["a"], 0.5, "x")] == [
        "True", "$None", "[32, 32]", '["a"]', "0.5", "x",
    ]  # fmt: skip


def test_finetune_commands_pass_each_initialisations_encoder_and_templates(tmp_path):
    study = Study(load_study(None, initialisations=["scratch", "mae", "brainmvp"]), tmp_path)
    _, finetunes = plan_runs(study.settings)
    by_init = {f.initialisation.name: f for f in finetunes if f.fraction == 0.1 and f.seed == 0}

    def option(command, key):
        return command[command.index(f"--{key}") + 1]

    train, evaluate = study.finetune_commands(by_init["scratch"], "datalist.json")
    assert option(train, "pretrained_encoder") == option(train, "templates_dir") == "$None"
    assert option(train, "label_fraction") == "0.1" and "evaluate.json" in option(evaluate, "config_file")
    mae, _ = study.finetune_commands(by_init["mae"], "datalist.json")
    assert option(mae, "pretrained_encoder").endswith("pretrain/mae/seed0/models/encoder.pt")
    assert option(mae, "templates_dir") == "$None"  # the baseline distils no templates
    brainmvp, _ = study.finetune_commands(by_init["brainmvp"], "datalist.json")
    assert option(brainmvp, "templates_dir").endswith("pretrain/brainmvp/seed0/models/templates")
    (pretrain,) = study.pretrain_commands(by_init["mae"].pretrain, "pretrain.json")
    assert option(pretrain, "objective") == "mae" and option(pretrain, "seed") == "0"
    # a recorded run made with other settings than the study's now is named in a warning
    assert study.changed_runs([], [by_init["scratch"]]) == []
    study.results.append(_row("scratch", 0.1, 0, 0.5))  # its command, "x", is not the study's
    assert "scratch fraction 0.1 seed 0" in study.changed_runs([], [by_init["scratch"]])[0]
    # a frozen encoder is one override more; an out-of-site test is one evaluation more (site studies only)
    frozen = Study(load_study(None, initialisations=["mae"], encoders=["frozen"]), tmp_path / "frozen")
    train, evaluate = frozen.finetune_commands(plan_runs(frozen.settings)[1][0], "datalist.json")
    assert option(train, "freeze_encoder") == option(evaluate, "freeze_encoder") == "True"


def test_killed_run_folder_starts_over(tmp_path):
    study = Study(load_study(None), tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "models" / "checkpoint.pt").write_text("partial")
    study._fresh_dir(run_dir)
    assert run_dir.is_dir() and not any(run_dir.iterdir())


def test_results_file_appends_atomically_and_refuses_duplicates(tmp_path):
    results = ResultsFile(tmp_path / "results.csv", "segmentation")
    results.append(_row("scratch", 0.5, 0, 0.4))
    results.append(_row("mae", 0.5, 0, 0.5))
    assert results.finished() == {("scratch", 0.5, "finetune", 0), ("mae", 0.5, "finetune", 0)}
    results.append([_row("mae", 0.5, 0, 0.3, "in", "frozen"), _row("mae", 0.5, 0, 0.2, "out", "frozen")])
    assert ("mae", 0.5, "frozen", 0) in results.finished() and len(results.rows()) == 4
    with pytest.raises(ValueError, match="one run"):
        results.append([_row("mae", 1.0, 0, 0.3), _row("mae", 1.0, 1, 0.3)])
    with pytest.raises(ValueError, match="already records"):
        results.append(_row("mae", 0.5, 0, 0.6))
    with pytest.raises(ValueError, match="lacks"):
        results.append({"initialisation": "x"})
    with pytest.raises(ValueError, match="columns"):
        ResultsFile(tmp_path / "results.csv", "classification").rows()
    assert not list(tmp_path.glob(".results.csv.*.tmp"))


def test_summary_table_and_figure(tmp_path):
    rows = [_row("scratch", f, s, d) for f, s, d in [(0.5, 0, 0.2), (0.5, 1, 0.4), (1.0, 0, 0.6)]]
    rows.append(_row("mae", 0.5, 0, 0.5))
    summary = summarise(rows, "dice_mean")
    mean, std, n = summary["scratch"][0.5]
    assert (mean, n) == (pytest.approx(0.3), 2) and std == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert summary["scratch"][1.0] == (0.6, 0.0, 1)
    assert summarise(rows, "dice_mean", "out") == {}
    assert summarise(rows, "hd95_et")["scratch"][0.5][2] == 0  # non-finite distances are left out
    table = results_table(rows, "segmentation", order=["scratch", "mae"])
    assert "| scratch | 0.300 ± 0.141 | 0.600 (n=1) |" in table and "| mae | 0.500 (n=1) | – |" in table
    figure = plot_label_efficiency(rows, "segmentation", tmp_path / "label_efficiency.png")
    assert figure.stat().st_size > 0


@pytest.mark.slow
def test_toy_study_end_to_end_and_resume(tmp_path, monkeypatch, capsys, caplog):
    """Two fractions, one seed, scratch and the MAE baseline, a few iterations of the quick settings."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tmp_path / "toy.yaml"
    config.write_text(
        "initialisations: [scratch, mae]\n"
        "fractions: [0.5, 1.0]\n"
        "seeds: 1\n"
        "pretrain:\n"
        "  cohort: {subjects: 4, spacing: 2.0, seed: 0, val_fraction: 0.0}\n"
        "  configs: [train.json, quick.json]\n"
        "  overrides: {epochs: 1, preview_interval: 5}\n"
        "segmentation:\n"
        "  cohort: {subjects: 6, spacing: 2.0, seed: 0, val_fraction: 0.2, test_fraction: 0.2}\n"
        "  configs: [train.json, quick.json]\n"
        "  overrides: {spacing: [4.0, 4.0, 4.0], max_epochs: 1, epoch_length: 2, val_interval: 1}\n"
    )
    out = tmp_path / "study"
    module = _script()
    assert module.main(["--config", str(config), "--output-dir", str(out)]) == 0
    first = capsys.readouterr().out
    assert "[run 5 of 5]" in first and "left" in first

    with open(out / "segmentation" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["initialisation"], float(r["labelled"]), int(r["seed"])) for r in rows) == [
        ("mae", 0.5, 0), ("mae", 1.0, 0), ("scratch", 0.5, 0), ("scratch", 1.0, 0),
    ]  # fmt: skip
    for row in rows:
        assert all(0.0 <= float(row[k]) <= 1.0 for k in ("dice_tc", "dice_wt", "dice_et", "dice_mean"))
        assert not math.isnan(float(row["hd95_wt"])) and float(row["seconds"]) > 0
        assert int(row["test_cases"]) == 1 and int(row["training_cases"]) == (2 if row["labelled"] == "0.5" else 4)
        assert row["command"].count("-m monai.bundle run") == 2 and "evaluate.json" in row["command"]
        encoder = "pretrain/mae/seed0/models/encoder.pt"
        assert (encoder in row["command"]) == (row["initialisation"] == "mae")
    # the MAE pre-training ran through the pre-training bundle and left its templates untouched
    mae_models = out / "pretrain" / "mae" / "seed0" / "models"
    assert (mae_models / "encoder.pt").is_file() and (mae_models.parent / "done.json").is_file()
    template = nib.load(str(next(mae_models.glob("templates/template_*.nii.gz"))))
    assert not np.any(np.asarray(template.dataobj))

    figure, table = out / "segmentation" / "label_efficiency.png", out / "segmentation" / "results.md"
    assert figure.stat().st_size > 0 and "| scratch |" in table.read_text() and "| mae |" in table.read_text()

    # a second invocation finds everything finished and runs nothing
    before = (out / "segmentation" / "results.csv").read_text()
    assert module.main(["--config", str(config), "--output-dir", str(out)]) == 0
    second = capsys.readouterr().out
    assert "to run now: 0 pre-training(s), 0 fine-tuning(s)" in second and "[run" not in second
    assert "other settings" not in caplog.text  # the recorded commands are the study's
    assert (out / "segmentation" / "results.csv").read_text() == before


def _site_study_file(tmp_path: Path, pool_subjects: int = 4, steps: int = 2) -> Path:
    """A site study at toy sizes: a 4-site pool, 1 and 2 labelled cases of site A, tests at sites A and D."""
    config = tmp_path / "sites.yaml"
    config.write_text(
        "initialisations: [scratch, mae]\n"
        "labelled_cases: {segmentation: [1, 2], classification: [1, 2]}\n"
        "encoders: [finetune, frozen]\n"
        "frozen_at: [2]\n"
        "only_at: {mae: [2]}\n"
        "seeds: 1\n"
        "sites: {pool: [A, B, C, D], labelled: A, out_of_site: D, validation: 1, test: 1}\n"
        "pretrain:\n"
        f"  cohort: {{subjects: {pool_subjects}, spacing: 2.0, seed: 0, val_fraction: 0.0}}\n"
        "  configs: [train.json, quick.json]\n"
        "  overrides: {epochs: 1, preview_interval: 5}\n"
        "segmentation:\n"
        "  cohort: {spacing: 2.0, seed: 0}\n"
        "  configs: [train.json, quick.json]\n"
        f"  overrides: {{spacing: [4.0, 4.0, 4.0], max_epochs: 1, epoch_length: {steps}, val_interval: 1}}\n"
    )
    return config


def test_site_study_plan_and_labelled_sets(tmp_path):
    from brainmvp_components.studies.site_splits import write_site_datalists

    settings = load_study(_site_study_file(tmp_path))
    pretrains, finetunes = plan_runs(settings)
    assert [p.initialisation.name for p in pretrains] == ["mae"]
    assert sorted((f.initialisation.name, f.labelled, f.encoder) for f in finetunes) == [
        ("mae", 2.0, "finetune"), ("mae", 2.0, "frozen"),
        ("scratch", 1.0, "finetune"), ("scratch", 2.0, "finetune"), ("scratch", 2.0, "frozen"),
    ]  # fmt: skip
    assert finetunes[0].run_dir(tmp_path).parts[-4:] == ("scratch", "labelled1", "finetune", "seed0")
    with pytest.raises(ValueError, match="labelled_cases"):
        load_study(None, sites={"labelled": "A"})
    with pytest.raises(ValueError, match="differ"):
        load_study(None, labelled_cases=[2], sites={"labelled": "A", "out_of_site": "A"})

    # labelled sets: nested, from the labelled site only, the same held-out splits in every file
    entries = [{"case": f"c{i:02d}", "image": "x.nii.gz", "label": i % 2, "site": "AD"[i // 12]} for i in range(16)]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": entries, "validation": [], "test": []}))
    paths = write_site_datalists(datalist, "A", "D", [1, 3], validation=1, test=2, seed=0)
    one, three = (json.loads(Path(paths[n]).read_text()) for n in (1, 3))
    cases = {name: [{e["case"] for e in doc[name]} for doc in (one, three)] for name in ("training", "test_out")}
    assert cases["training"][0] < cases["training"][1] and len(cases["training"][1]) == 6
    assert sorted(e["label"] for e in three["training"]) == [0, 0, 0, 1, 1, 1]
    assert all(e["site"] == "A" for doc in (one, three) for s in ("training", "validation", "test") for e in doc[s])
    assert [e["site"] for e in three["test_out"]] == ["D"] * 4 and one["test"] == three["test"]
    held_out = {e["case"] for s in ("validation", "test") for e in three[s]}
    assert not held_out & cases["training"][1]
    with pytest.raises(ValueError, match="not enough"):
        write_site_datalists(datalist, "A", "D", [9], validation=1, test=2, seed=0)


@pytest.mark.slow
def test_site_study_smoke_end_to_end(tmp_path, monkeypatch, capsys):
    """The pool design at toy sizes: a multi-site pool pre-trains the MAE baseline; 1 and 2 labelled cases of one
    site, fine-tuned and frozen; in-site and out-of-site rows; the figure's panels."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "study"
    config = _site_study_file(tmp_path)
    module = _script()
    assert module.main(["--config", str(config), "--output-dir", str(out), "--workers", "2"]) == 0
    assert "[run 6 of 6]" in capsys.readouterr().out

    with open(out / "segmentation" / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:5] == ["initialisation", "labelled", "test_site", "encoder", "seed"]
    assert "dice_mean" in reader.fieldnames and "hd95_et" in reader.fieldnames
    keys = sorted((r["initialisation"], r["labelled"], r["encoder"], r["test_site"]) for r in rows)
    assert keys == sorted(
        (init, n, encoder, site)
        for init, n, encoder in [("mae", "2", "finetune"), ("mae", "2", "frozen"), ("scratch", "1", "finetune"),
                                 ("scratch", "2", "finetune"), ("scratch", "2", "frozen")]
        for site in ("in", "out")
    )  # fmt: skip
    for row in rows:
        assert int(row["test_cases"]) == 1 and int(row["training_cases"]) == int(row["labelled"])
        evaluation = "--eval_split test_out" in row["command"]
        assert evaluation and row["command"].count("-m monai.bundle run") == 3
        assert ("--freeze_encoder True" in row["command"]) == (row["encoder"] == "frozen")
    pool = json.loads((out / "data" / "pretrain" / "datalist.json").read_text())
    assert sorted(e["site"] for e in pool["training"]) == ["A", "B", "C", "D"]
    labelled = json.loads((out / "data" / "brats" / "datalist_labelled2.json").read_text())
    assert {e["site"] for e in labelled["training"]} == {"A"} and {e["site"] for e in labelled["test_out"]} == {"D"}

    figure = out / "segmentation" / "label_efficiency.png"
    table = (out / "segmentation" / "results.md").read_text()
    assert figure.stat().st_size > 0 and "out-of-site test" in table and "| mae (frozen) |" in table
    from PIL import Image

    width, height = Image.open(figure).size
    assert height > 0.35 * width  # two rows of panels: in-site over out-of-site

    # resume: nothing left to run
    assert module.main(["--config", str(config), "--output-dir", str(out)]) == 0
    assert "to run now: 0 pre-training(s), 0 fine-tuning(s)" in capsys.readouterr().out
