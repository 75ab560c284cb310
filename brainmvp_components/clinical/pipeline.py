"""The hospital-study path: a folder of series as a hospital exports them, to a segmentation on the series the
radiologist reads, with a quality-control record that says when not to trust it.

One case is one folder (a study): DICOM series (a folder per series, or every file in one folder) and/or loose
NIfTI files, each series on its own grid, skull on, names that may be wrong. :class:`HospitalStudySegmenter`
runs, per case, a sequence of steps, each done by a module with one job and each leaving a record:

1. read every series, skipping localisers and non-image objects (:mod:`brainmvp_components.data.series`);
2. name their modalities from user overrides, file names, DICOM descriptions or sequence parameters
   (:mod:`brainmvp_components.data.identify`);
3. choose the reference series (t1c when present, else the finest) and co-register every other series to it,
   rigidly, each keeping its own grid (:mod:`~brainmvp_components.clinical.coregister`);
4. extract the brain on the reference, or keep an already skull-stripped reference as it is
   (:mod:`~brainmvp_components.clinical.brain_mask`);
5. align the reference's brain to the model's atlas frame (a similarity transform, mutual information with the
   cohort's nominal brain) and resample every series there in one step, masked by the brain;
6. check each series' identity by its tissue contrast (:mod:`~brainmvp_components.clinical.contrast`) and
   against the templates (:mod:`~brainmvp_components.clinical.identity`); flag, or reorder, a study whose names
   disagree with its images;
7. segment with the bundle's own preprocessing, network and inferer (missing modalities from the templates);
8. take the region probabilities back to the reference series' own grid and write the labels there as NIfTI
   and, for a DICOM reference, as DICOM SEG (:mod:`~brainmvp_components.clinical.dicom_seg`), with an overlay;
9. quality control: a JSON sidecar per case and one ``qc.csv`` per run; cases outside plausible ranges are
   flagged (:mod:`~brainmvp_components.clinical.qc`), and the run's last line counts them.

A case that cannot be read or segmented is a failure with one line naming the case and the series; the run goes
on with the next case and ends, as the bundle's batch inference does, with a summary line and exit status 1
when any case failed (or, with ``fail_on_flags``, when any case was flagged).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage as ndi

from brainmvp_components.data.atlas import atlas_grid
from brainmvp_components.data.modalities import canonical_modalities
from brainmvp_components.inference.batch import InferenceError, InferenceFailed
from brainmvp_components.utils.misc import as_flag
from brainmvp_components.utils.writers import write_json

__all__ = [
    "IDENTITY_ACTIONS",
    "CaseResult",
    "HospitalStudySegmenter",
    "segmenter_from_bundle",
    "find_study_cases",
    "choose_reference",
    "load_trained_weights",
    "names_from_identity",
]

logger = logging.getLogger(__name__)

IDENTITY_ACTIONS: tuple[str, ...] = ("flag", "reorder")
"""What a case whose series look like other modalities than their names say gets: ``flag`` (segmented as named,
flagged) or ``reorder`` (segmented with the modalities the images show, noted in the QC record)."""

_SERIES_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class CaseResult:
    """What one case produced: ``qc`` (the JSON-ready record), the files written, or the failure."""

    case: str
    qc: dict[str, Any] | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.qc and self.qc.get("flags"))


def _holds_series_files(folder: Path) -> bool:
    """Whether ``folder`` itself holds image files (NIfTI or DICOM), rather than only sub-folders."""
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            if path.name.lower().endswith(_SERIES_SUFFIXES):
                return True
            with open(path, "rb") as handle:
                head = handle.read(132)
            if head[128:132] == b"DICM":
                return True
    return False


def load_trained_weights(network: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu"):
    """``network`` with the trained weights of ``path`` (a state dict, loaded with ``weights_only=True``), on
    ``device``.

    Raises:
        InferenceError: the file is missing or does not fit the network (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"hospital studies not started: no trained model at {path} (train the bundle first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise InferenceError(
            f"hospital studies not started: {path} does not fit the configured network: {first}"
        ) from None
    return network.to(device)


def names_from_identity(names: Sequence[str], reliable_mismatches: Mapping[str, str | None]) -> dict[str, str]:
    """The renaming a study gets when images reliably look like other modalities than their names:
    ``{claimed: shown}`` for the series to rename.

    The usual export error is two names exchanged, and the identity check is sure of some modalities only (t2 stands
    out; t1, t1c and FLAIR look alike to it), so a series named ``a`` that reliably shows ``b`` exchanges names with
    the series named ``b``; when the study has no ``b``, it is simply renamed.
    """
    renaming: dict[str, str] = {}
    for claimed, shown in reliable_mismatches.items():
        if not shown or shown == claimed or claimed in renaming:
            continue
        if shown in names:
            if shown not in renaming:
                renaming[claimed], renaming[shown] = shown, claimed
        else:
            renaming[claimed] = shown
    return renaming


def find_study_cases(dataset_dir: str | Path) -> list[Path]:
    """The case folders of a run: every sub-folder of ``dataset_dir`` is one study, unless ``dataset_dir`` itself
    holds image files, in which case it is the one study. A study with a folder per series therefore sits in a
    case folder of its own.

    Raises:
        InferenceError: the folder does not exist or holds no study.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InferenceError(f"hospital studies not started: {root} is not a folder")
    if _holds_series_files(root):
        return [root]
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise InferenceError(f"hospital studies not started: {root} holds no study folders and no image files")
    return cases


def choose_reference(assigned: Mapping[str, Any], preferred: Sequence[str] = ("t1c",)) -> str:
    """The modality whose series is the reference: the first of ``preferred`` present, else the series with the
    smallest voxel volume (ties broken by the order of ``assigned``)."""
    for modality in preferred:
        if modality in assigned:
            return modality
    volumes = {m: float(np.prod(ident.series.spacing)) for m, ident in assigned.items()}
    return min(volumes, key=volumes.get)


class HospitalStudySegmenter:
    """Segment hospital studies with a trained segmentation bundle (see the module docstring for the steps).

    Args:
        network: the segmentation network, weights loaded, outputting region logits ``(B, 3, H, W, D)``
            ordered (TC, WT, ET).
        inferer: a MONAI inferer (sliding window) called as ``inferer(inputs, network)``.
        preprocessing: the bundle's inference preprocessing (a callable on ``{"image": [files], "modalities":
            [names], "case": id}``) that loads, scales and imputes; it sees the atlas-frame volumes this class
            writes, so a hospital study meets exactly the preprocessing of an embedded case.
        templates: the distilled templates (:class:`~brainmvp_components.networks.templates.ModalityTemplates`),
            used to check identities (and, through ``preprocessing``, to impute missing modalities).
        modalities: the model's input modalities, in channel order.
        output_dir: where every case's folder and ``qc.csv`` go.
        spacing: the model's grid spacing in mm (the atlas field of view sampled at it).
        device: where the network runs.
        modality_map: user overrides of series names (``{series name or regex: modality}``) or a JSON file.
        brain_extraction: ``"auto"``, ``"deepbet"``, ``"atlas"`` or ``"none"``
            (:func:`~brainmvp_components.clinical.brain_mask.extract_brain`).
        identity_action: one of :data:`IDENTITY_ACTIONS`.
        label_convention: ``"brats2021"`` or ``"brats2023"``.
        qc_ranges: overrides of :data:`~brainmvp_components.clinical.qc.QC_RANGES`.
        save_preprocessed: keep the atlas-frame volumes and brain mask the network saw (``preprocessed/``).
        save_overlay: write ``<case>_overlay.png`` over the reference series.
        write_dicom_seg: write ``<case>_seg.dcm`` when the reference series is DICOM.
        fail_on_flags: end the run with exit status 1 when any case is flagged.
        overwrite: segment cases whose QC record exists again (otherwise they are skipped: a run resumes).
        amp: autocast on CUDA.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable,
        preprocessing: Callable,
        templates,
        modalities: Sequence[str],
        output_dir: str | Path,
        spacing: float | Sequence[float] = 1.0,
        device: str | torch.device = "cpu",
        modality_map: Mapping[str, str] | str | Path | None = None,
        brain_extraction: str = "auto",
        identity_action: str = "flag",
        label_convention: str = "brats2021",
        qc_ranges: Mapping[str, Any] | None = None,
        save_preprocessed: bool = False,
        save_overlay: bool = True,
        write_dicom_seg: bool = True,
        fail_on_flags: bool = False,
        overwrite: bool = False,
        amp: bool = False,
    ) -> None:
        from brainmvp_components.clinical.qc import QC_RANGES
        from brainmvp_components.data.identify import load_modality_map

        if identity_action not in IDENTITY_ACTIONS:
            raise ValueError(f"identity_action must be one of {IDENTITY_ACTIONS}, got {identity_action!r}")
        if templates is None:
            raise InferenceError(
                "hospital studies need the distilled templates (to check modality identities and impute missing "
                "ones); none were found: set templates_dir"
            )
        self.network = network
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.templates = templates
        self.modalities = canonical_modalities(modalities)
        self.output_dir = Path(output_dir)
        spacings = [float(s) for s in (spacing if isinstance(spacing, Sequence) else [spacing])]
        if len(set(spacings)) != 1:
            raise ValueError(f"the model's grid must be isotropic (the atlas frame), got spacing {spacings}")
        self.grid_shape, self.grid_affine = atlas_grid(spacings[0])
        self.device = torch.device(device)
        if isinstance(modality_map, (str, Path)):
            modality_map = load_modality_map(modality_map)
        self.modality_map = dict(modality_map or {})
        self.brain_extraction = brain_extraction
        self.identity_action = identity_action
        self.label_convention = label_convention
        self.qc_ranges = {**QC_RANGES, **dict(qc_ranges or {})}
        self.save_preprocessed = as_flag(save_preprocessed, "save_preprocessed")
        self.save_overlay = as_flag(save_overlay, "save_overlay")
        self.write_dicom_seg = as_flag(write_dicom_seg, "write_dicom_seg")
        self.fail_on_flags = as_flag(fail_on_flags, "fail_on_flags")
        self.overwrite = as_flag(overwrite, "overwrite")
        self.amp = as_flag(amp, "amp")

    # ---------------------------------------------------------------- the run
    def run(self, dataset_dir: str | Path) -> list[CaseResult]:
        """Segment every study under ``dataset_dir`` (see :func:`find_study_cases`); write ``qc.csv``.

        Raises:
            InferenceFailed: some case failed, or (``fail_on_flags``) was flagged; the message is the summary.
        """
        cases = find_study_cases(dataset_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        results: list[CaseResult] = []
        for number, case_dir in enumerate(cases, start=1):
            case = case_dir.name
            sidecar = self._case_dir(case) / f"{case}_qc.json"
            if sidecar.is_file() and not self.overwrite:
                logger.info(f"[{number}/{len(cases)}] {case}: done before ({sidecar.name} exists), skipped")
                results.append(CaseResult(case, qc=json.loads(sidecar.read_text())))
                continue
            logger.info(f"[{number}/{len(cases)}] {case}: segmenting")
            try:
                results.append(self.segment_case(case_dir))
            except Exception as err:  # one bad study must not stop the others
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                logger.error(f"{case}: failed: {message}")
                results.append(CaseResult(case, error=message))
            self._write_run_report(results)
        return self.finish(results)

    def finish(self, results: Sequence[CaseResult]) -> list[CaseResult]:
        """Write ``qc.csv`` for ``results`` and log the run's summary line.

        Raises:
            InferenceFailed: some case failed, or (``fail_on_flags``) was flagged; the message is the summary.
        """
        report = self._write_run_report(results)
        failed = [r for r in results if r.error]
        flagged = [r for r in results if r.flagged]
        done = len(results) - len(failed)
        summary = (
            f"hospital studies: {len(results)} case(s), {done} segmented, {len(flagged)} flagged"
            f"{' (' + ', '.join(r.case for r in flagged) + ')' if flagged else ''}, {len(failed)} failed"
            f"{' (' + ', '.join(r.case for r in failed) + ')' if failed else ''}; quality control: {report}"
        )
        if failed or (flagged and self.fail_on_flags):
            records = [{"case": r.case, "reason": r.error or "; ".join(r.qc["flags"])} for r in (*failed, *flagged)]
            raise InferenceFailed(summary, records, report)
        logger.info(summary)
        return list(results)

    def _write_run_report(self, results: Sequence[CaseResult]) -> Path:
        from brainmvp_components.clinical.qc import write_qc_csv

        records = [r.qc if r.qc else {"case_id": r.case, "error": r.error} for r in results]
        return write_qc_csv(records, self.output_dir / "qc.csv")

    def _case_dir(self, case: str) -> Path:
        return self.output_dir / case

    # ---------------------------------------------------------------- one case
    def segment_case(self, case_dir: str | Path) -> CaseResult:
        """Run the steps of the module docstring on one study folder and write its outputs."""
        case = Path(case_dir).name
        start = time.perf_counter()
        assigned, skipped, unassigned = self.identify_case(case_dir)
        seconds = {"read_and_identify": round(time.perf_counter() - start, 2)}
        return self.segment_series(case, assigned, skipped=skipped, unassigned=unassigned, seconds=seconds)

    def identify_case(self, case_dir: str | Path) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """Steps 1-2 on one study folder: ``(modality -> Identification, skipped series, unused identifications)``.

        Raises:
            ValueError: no series is one of the model's modalities (one line naming the case and its series); the
                errors of :func:`~brainmvp_components.data.series.read_study` and
                :func:`~brainmvp_components.data.identify.assign_modalities`.
        """
        from brainmvp_components.data.identify import assign_modalities
        from brainmvp_components.data.series import read_study

        case_dir = Path(case_dir)
        case = case_dir.name
        series, skipped = read_study(case_dir)
        for item in skipped:
            logger.info(f"{case}: series '{item.name}' skipped: {item.reason}")
        assigned, unassigned = assign_modalities(series, self.modality_map, modalities=self.modalities)
        for item in unassigned:
            logger.info(f"{case}: series '{item.series.name}' not used: {item.evidence}")
        if not assigned:
            names = ", ".join(s.name for s in series) or "none"
            raise ValueError(
                f"{case}: no series identified as one of {list(self.modalities)} (series: {names}); name them with "
                "modality_map"
            )
        for modality, ident in assigned.items():
            logger.info(f"{case}: {modality} <- '{ident.series.name}' ({ident.evidence})")
        return assigned, skipped, unassigned

    def segment_series(
        self,
        case: str,
        assigned: Mapping[str, Any],
        *,
        skipped: Sequence[Any] = (),
        unassigned: Sequence[Any] = (),
        seconds: Mapping[str, float] | None = None,
    ) -> CaseResult:
        """Steps 3-9 on series already read and identified, as :meth:`identify_case` returns them or as another
        reader (MONAI Deploy's series selection) gives them.

        Args:
            case: the case id: the name of its output folder and files.
            assigned: modality -> :class:`~brainmvp_components.data.identify.Identification` (``series`` and
                ``evidence``), in the order of :attr:`modalities`.
            skipped: :class:`~brainmvp_components.data.series.SkippedSeries` left out when reading, for the record.
            unassigned: identifications of series not used, for the record.
            seconds: time already spent on the case, by step (added to the record's ``step_seconds``).
        """
        from brainmvp_components.clinical.brain_mask import extract_brain
        from brainmvp_components.clinical.qc import CaseQC, qc_flags, tumour_volumes

        if not assigned:
            raise ValueError(f"{case}: no series given for any of {list(self.modalities)}")
        unknown = [m for m in assigned if m not in self.modalities]
        if unknown:
            raise ValueError(f"{case}: series given as {unknown}, which the model does not take ({self.modalities})")
        assigned = {m: assigned[m] for m in self.modalities if m in assigned}
        start = time.perf_counter()
        seconds = dict(seconds or {})
        start -= sum(seconds.values())

        def lap(step: str, since: float) -> float:
            now = time.perf_counter()
            seconds[step] = round(now - since, 2)
            return now

        mark = time.perf_counter()
        reference_modality = choose_reference(assigned)
        reference = assigned[reference_modality].series
        transforms, registration_records = self._coregister(assigned, reference_modality)
        mark = lap("coregistration", mark)

        brain = extract_brain(reference.array, reference.affine, method=self.brain_extraction)
        mark = lap("brain_extraction", mark)

        to_atlas, atlas_record = self._align_to_atlas(reference.array, reference.affine, brain.mask, reference_modality)
        images, atlas_mask, coverage = self._resample_to_atlas(assigned, transforms, to_atlas, brain.mask, reference)
        mark = lap("atlas_alignment", mark)

        identity = self._check_identity(images, atlas_mask)
        reordered = None
        if identity.get("reliable_mismatches") and self.identity_action == "reorder":
            renaming = names_from_identity(list(images), identity["reliable_mismatches"])
            if renaming:
                reordered = renaming
                images = {renaming.get(m, m): volume for m, volume in images.items()}
                logger.warning(f"{case}: series renamed by what their images show: {reordered}")
        mark = lap("identity_check", mark)

        out_dir = self._case_dir(case)
        work_dir = out_dir / "preprocessed"
        if work_dir.exists():
            shutil.rmtree(work_dir)
        files = self._write_model_inputs(case, images, atlas_mask, work_dir)
        regions, model_affine, imputed = self._segment(case, files, [m for m in self.modalities if m in images])
        mark = lap("segmentation", mark)

        probabilities = self._regions_to_reference(regions, model_affine, to_atlas, reference)
        labels, outside_fraction = self._labels_on_reference(probabilities, brain.mask)
        outputs = self._write_outputs(case, labels, reference, out_dir)
        if not self.save_preprocessed:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            outputs["preprocessed"] = str(work_dir)
        lap("writing", mark)

        quality = CaseQC(
            case_id=case,
            reference_series=reference.name,
            registration_mi={
                assigned[m].series.name: r["mutual_information"]
                for m, r in registration_records.items()
                if "mutual_information" in r
            },
            slice_thickness_mm={ident.series.name: float(max(ident.series.spacing)) for ident in assigned.values()},
            brain_coverage=coverage,
            brain_volume_ml=float(brain.volume_ml),
            already_stripped=bool(brain.already_stripped),
            brain_extraction=brain.method,
            tumour_volume_ml=tumour_volumes(labels, reference.affine, self.label_convention),
            tumour_outside_brain_fraction=float(outside_fraction),
            identity=identity,
            imputed_modalities=imputed,
            seconds=time.perf_counter() - start,
        )
        record = quality.as_record()
        record.update(
            reference_modality=reference_modality,
            series={
                m: {
                    "name": ident.series.name,
                    "source": ident.series.source,
                    "evidence": ident.evidence,
                    "voxel_mm": [round(float(v), 3) for v in ident.series.spacing],
                    "registration": registration_records.get(m),
                }
                for m, ident in assigned.items()
            },
            skipped_series=[{"name": s.name, "reason": s.reason} for s in skipped],
            unused_series=[{"name": u.series.name, "evidence": u.evidence} for u in unassigned],
            atlas_alignment=atlas_record,
            reordered=reordered,
            outputs={k: (Path(v).name if k != "preprocessed" else v) for k, v in outputs.items()},
            step_seconds=seconds,
        )
        record["flags"] = qc_flags(record, self.qc_ranges)
        for flag in record["flags"]:
            logger.warning(f"{case}: FLAGGED: {flag}")
        sidecar = out_dir / f"{case}_qc.json"
        write_json(sidecar, record)
        outputs["qc"] = str(sidecar)
        return CaseResult(case, qc=record, outputs=outputs)

    # ---------------------------------------------------------------- steps
    def _coregister(self, assigned, reference_modality: str) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Reference world -> each series' world (identity for the reference), and the registration records."""
        from brainmvp_components.clinical.coregister import rigid_register

        reference = assigned[reference_modality].series
        transforms = {reference_modality: np.eye(4)}
        records: dict[str, dict] = {reference_modality: {"method": "reference"}}
        for modality, ident in assigned.items():
            if modality == reference_modality:
                continue
            result = rigid_register(ident.series.array, ident.series.affine, reference.array, reference.affine)
            transforms[modality] = result.transform
            records[modality] = result.as_record()
        return transforms, records

    def _align_to_atlas(self, array, affine, mask, modality: str) -> tuple[np.ndarray, dict]:
        """Reference world -> atlas world: the reference's brain registered (similarity: rotation, translation,
        size) to the cohort's nominal brain (:func:`~brainmvp_components.data.cohort.nominal_brain`), the frame
        the training data vary around. Mutual information does not need the reference to be T1-weighted."""
        from brainmvp_components.data.cohort import nominal_brain
        from brainmvp_components.transforms.registration import register_to_template

        brain = np.where(mask, array, 0.0).astype(np.float32)
        inside = brain[mask]
        low, high = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
        brain = np.where(mask, np.clip((brain - low) / max(high - low, 1e-6), 0.0, 1.0), 0.0).astype(np.float32)
        target, _, target_affine = nominal_brain(2.0)
        result = register_to_template(
            brain, affine, target, target_affine, modality, "nominal_brain",
            level_spacings_mm=(8.0, 4.0, 2.0), iterations=(200, 100, 50), transform_type="similarity",
        )  # fmt: skip
        return result.transform, result.as_record()

    def _resample_to_atlas(self, assigned, transforms, to_atlas, reference_mask, reference):
        """Every series and the brain mask on the model's grid, masked by the brain (one resampling each), and the
        fraction of the brain inside each series' field of view."""
        from brainmvp_components.clinical.coregister import resample_to_grid

        from_atlas = np.linalg.inv(to_atlas)
        mask = resample_to_grid(
            reference_mask.astype(np.float32), reference.affine, self.grid_affine, self.grid_shape,
            transform=from_atlas, order=1,
        ) > 0.5  # fmt: skip
        images, coverage = {}, {}
        for modality, ident in assigned.items():
            to_series = transforms[modality] @ from_atlas
            volume = resample_to_grid(
                ident.series.array, ident.series.affine, self.grid_affine, self.grid_shape, transform=to_series, order=1
            )
            images[modality] = np.where(mask, np.maximum(volume, 0.0), 0.0).astype(np.float32)
            field_of_view = resample_to_grid(
                np.ones(ident.series.shape, dtype=np.float32), ident.series.affine, self.grid_affine,
                self.grid_shape, transform=to_series, order=0,
            ) > 0  # fmt: skip
            coverage[ident.series.name] = float((field_of_view & mask).sum() / max(mask.sum(), 1))
        return images, mask, coverage

    def _check_identity(self, images: Mapping[str, np.ndarray], mask: np.ndarray) -> dict:
        """What each image looks like: its tissue contrast (:mod:`~brainmvp_components.clinical.contrast`: T1, T2
        or FLAIR weighting) and its correlation with the templates (:mod:`~brainmvp_components.clinical.identity`:
        reliable for t2). ``reliable_mismatches`` joins the two, the contrast deciding where both speak."""
        from brainmvp_components.clinical.contrast import (
            WEIGHTINGS,
            contrast_mismatches,
            tissue_contrast,
            weighting_of,
        )
        from brainmvp_components.clinical.identity import check_modality_identity
        from brainmvp_components.data.cohort import nominal_tissues

        spacing = float(np.linalg.norm(self.grid_affine[:3, 0]))
        tissues = nominal_tissues(spacing)
        contrast = {m: tissue_contrast(volume, mask, tissues) for m, volume in images.items()}
        weightings = {m: weighting_of(c) for m, c in contrast.items()}
        arrays = self.templates.as_arrays()
        wanted = [m for m in images if m in arrays]
        if len(wanted) >= 2:
            templates = {
                m: np.asarray(self.templates.resample_to_grid(m, self.grid_affine, self.grid_shape)).reshape(
                    self.grid_shape
                )
                for m in self.modalities
                if m in arrays
            }
            record = check_modality_identity({m: images[m] for m in wanted}, templates, mask).as_record()
        else:
            record = {"consistent": True, "suggested": {m: m for m in images}, "mismatches": {}}
        confirmed = {m for m, w in weightings.items() if w is not None and w == WEIGHTINGS.get(m)}
        reliable = {m: s for m, s in record.get("reliable_mismatches", {}).items() if m not in confirmed}
        reliable.update(contrast_mismatches(weightings, list(images)))
        record["reliable_mismatches"] = reliable
        record["contrast"] = {
            m: {**{k: round(v, 3) for k, v in c.items()}, "weighting": weightings[m]} for m, c in contrast.items()
        }
        return record

    def _write_model_inputs(self, case: str, images, mask, work_dir: Path) -> dict[str, Path]:
        from brainmvp_components.utils.writers import atomic_write

        work_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, volume in {**images, "brain_mask": mask.astype(np.uint8)}.items():
            path = work_dir / f"{case}_{name}.nii.gz"
            image = nib.Nifti1Image(volume, self.grid_affine)
            files[name] = atomic_write(path, lambda tmp, image=image: nib.save(image, tmp), suffix=".nii.gz")
        return files

    def _segment(self, case: str, files: Mapping[str, Path], present: Sequence[str]):
        """Region probabilities ``(3, H, W, D)`` on the model's grid, its affine, and the imputed modalities."""
        item = self.preprocessing(
            {"image": [str(files[m]) for m in present], "modalities": list(present), "case": case}
        )
        image = item["image"]
        imputed = [m for m in str(image.meta.get("imputed_modalities", "")).split(",") if m]
        self.network.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
            logits = self.inferer(torch.as_tensor(image)[None].to(self.device), self.network)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        probabilities = torch.sigmoid(logits.float())[0].cpu().numpy()
        affine = np.asarray(image.affine if hasattr(image, "affine") else self.grid_affine, dtype=np.float64)
        return probabilities, affine, imputed

    def _regions_to_reference(self, regions: np.ndarray, model_affine, to_atlas, reference) -> np.ndarray:
        """Region probabilities sampled on the reference series' grid ``(3, I, J, K)``."""
        from brainmvp_components.clinical.coregister import resample_to_grid

        return np.stack(
            [
                resample_to_grid(channel, model_affine, reference.affine, reference.shape, transform=to_atlas, order=1)
                for channel in regions
            ]
        )

    def _labels_on_reference(self, probabilities: np.ndarray, brain_mask: np.ndarray) -> tuple[np.ndarray, float]:
        """BraTS labels on the reference grid, kept inside the brain; and the fraction of the predicted whole
        tumour that lay outside the brain mask (grown by one voxel) before that."""
        from brainmvp_components.transforms.labels import RegionsToBratsLabel

        labels = np.asarray(RegionsToBratsLabel(self.label_convention)(probabilities))[0].astype(np.uint8)
        brain = ndi.binary_dilation(brain_mask, iterations=1)
        tumour = labels > 0
        outside = float((tumour & ~brain).sum() / tumour.sum()) if tumour.any() else 0.0
        labels[~brain] = 0
        return labels, outside

    def _write_outputs(self, case: str, labels: np.ndarray, reference, out_dir: Path) -> dict[str, str]:
        from brainmvp_components.utils.writers import atomic_write

        out_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, str] = {}
        nifti = out_dir / f"{case}_seg.nii.gz"
        image = nib.Nifti1Image(labels, reference.affine)
        image.set_data_dtype(np.uint8)
        outputs["segmentation"] = str(atomic_write(nifti, lambda tmp: nib.save(image, tmp), suffix=".nii.gz"))
        if self.write_dicom_seg and reference.source == "dicom":
            from brainmvp_components.clinical.dicom_seg import write_dicom_seg
            from brainmvp_components.data.brats import brats_label_names

            outputs["dicom_seg"] = str(
                write_dicom_seg(
                    labels,
                    reference.dicom_files,
                    out_dir / f"{case}_seg.dcm",
                    label_names=brats_label_names(self.label_convention),
                )  # fmt: skip
            )
        if self.save_overlay:
            from brainmvp_components.visualize.previews import save_overlay

            outputs["overlay"] = str(
                save_overlay(
                    reference.array, labels, out_dir / f"{case}_overlay.png", title=f"{case}: {reference.name}"
                )
            )
        return outputs


def segmenter_from_bundle(
    bundle_root: str | Path,
    config_files: Sequence[str] = ("inference.json", "inference_clinical.json"),
    output_dir: str | Path | None = None,
    **overrides: Any,
) -> HospitalStudySegmenter:
    """The :class:`HospitalStudySegmenter` that ``inference_clinical.json`` configures for the trained bundle at
    ``bundle_root``, initialised as ``python -m monai.bundle run`` initialises it (determinism, trained weights).

    Args:
        bundle_root: the bundle folder: ``configs/`` (with ``metadata.json``) and ``models/`` (``model.pt`` and
            ``templates/``).
        config_files: the config files to layer, names in ``configs/`` or paths, ending with
            ``inference_clinical.json``; add ``quick.json`` before it for a model trained with it.
        output_dir: where the cases' folders and ``qc.csv`` go (the config's default when ``None``).
        overrides: further config overrides (``write_dicom_seg=False``, ``brain_extraction="atlas"``...).

    Raises:
        InferenceError: a config file or the trained model is missing (one line naming it).
    """
    from monai.bundle import ConfigWorkflow

    root = Path(bundle_root)
    files = [Path(c) if Path(c).is_absolute() else root / "configs" / c for c in config_files]
    missing = [str(f) for f in (*files, root / "configs" / "metadata.json") if not f.is_file()]
    if missing:
        raise InferenceError(f"hospital studies not started: bundle {root} lacks {', '.join(missing)}")
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type="inference",
        bundle_root=str(root),
        **overrides,
    )
    workflow.initialize()
    return workflow.parser.get_parsed_content("segmenter")
