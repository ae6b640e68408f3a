"""A scored instance's results as DICOM: a Comprehensive SR and a colour Secondary Capture in its study.

The SR follows the template documented in docs/DICOM_NODE.md ("PNEUMO-CXR-1"): one finding, Pneumonia
(SNOMED CT 233604007), with P(pneumonia) as a NUM, the label, the threshold and its source, P(viral |
pneumonia) when given, the refusal and its reason when refused, the algorithm (TID 4019: name, version,
parameters with the model's sha256), the device observer, and an INFERRED FROM reference to the source image.

UIDs are derived from the source SOP Instance UID and the model's sha256 (result_uids), so scoring the
same instance again after a crash produces the very same objects: a receiver keeps one copy.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.sr.coding import Code

from pneumo_desktop import __version__
from pneumo_desktop.core.dicom_node.result_image import NOTICE, render_result
from pneumo_desktop.core.runtime import Explanation, Prediction

MANUFACTURER = "Pneumo Desktop (open source)"
SCHEME = "99PNEUMO"  # private coding scheme for concepts no standard names (documented in DICOM_NODE.md)
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
FINDING = Code("121071", "DCM", "Finding")
TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
SOURCE_IMAGE = Code("121112", "DCM", "Source of Measurement")
COMMENT = Code("121106", "DCM", "Comment")
NO_UNITS = Code("1", "UCUM", "no units")
P_PNEUMONIA = Code("PNEU-P", SCHEME, "Probability of pneumonia")
P_VIRAL = Code("PNEU-PV", SCHEME, "Probability of viral pneumonia given pneumonia")
THRESHOLD = Code("PNEU-T", SCHEME, "Decision threshold")
THRESHOLD_SOURCE = Code("PNEU-TS", SCHEME, "Decision threshold source")
RESULT = Code("PNEU-R", SCHEME, "AI result")
REFUSAL_REASON = Code("PNEU-RR", SCHEME, "Reason for refusal")
LEVEL = Code("PNEU-L", SCHEME, "Result level")
LEVELS = {
    "low": Code("PNEU-LOW", SCHEME, "Low: below the rule-out point"),
    "indeterminate": Code("PNEU-IND", SCHEME, "Indeterminate: needs a reader"),
    "high": Code("PNEU-HIGH", SCHEME, "High: at or above the rule-in point"),
}
LEVEL_FIGURES = Code("PNEU-LF", SCHEME, "Result level operating figures")
RESULTS = {
    "PNEUMONIA": Code("PNEU-POS", SCHEME, "Pneumonia suggested"),
    "NORMAL": Code("PNEU-NEG", SCHEME, "Pneumonia not suggested"),
    "REFUSED": Code("PNEU-REF", SCHEME, "Refused: not assessable by the algorithm"),
}
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass(frozen=True)
class ResultUids:
    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str


def result_uids(study_uid: str, source_sop_uid: str, model_sha256: str) -> ResultUids:
    """Fixed UIDs (2.25 form) for one source instance and model; one SR and one SC series per study and model."""
    def uid(*parts: str) -> str:
        return _name_uid("\n".join([model_sha256, *parts]))

    return ResultUids(
        sr_series=uid(study_uid, "sr-series"),
        sr_instance=uid(source_sop_uid, "sr"),
        sc_series=uid(study_uid, "sc-series"),
        sc_instance=uid(source_sop_uid, "sc"),
    )


@dataclass(frozen=True)
class ResultObjects:
    sr: Dataset
    sc: Dataset
    uids: ResultUids


_NAMESPACE = uuid.UUID("6f1b8c2e-5d0a-4b7e-9a51-3c2d7e0f4a10")  # this app's: name-based UUIDs cannot collide


def _name_uid(name: str) -> str:
    """A 2.25 UID from a name-based (version 5) UUID: the same name gives the same UID everywhere."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def _device_uid(model_sha256: str) -> str:
    return _name_uid(f"device\n{model_sha256}")


def _text(name: Code, value: str, relation: str = "HAS PROPERTIES") -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024] or "-", relationship_type=relation)


def _num(name: Code, value: float) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=float(round(value, 6)), unit=NO_UNITS,
                                relationship_type="HAS PROPERTIES")


def build_content(source: Dataset, prediction: Prediction) -> hd.sr.ContainerContentItem:
    """The SR content tree (template PNEUMO-CXR-1, see docs/DICOM_NODE.md)."""
    root = hd.sr.ContainerContentItem(name=TITLE)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_device_uid(prediction.model_sha256), name="Pneumo Desktop", manufacturer_name=MANUFACTURER,
        model_name=f"{prediction.model_name} {prediction.model_version}",
    )
    observer = hd.sr.ObserverContext(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
                                     observer_identifying_attributes=device)
    items: list[Dataset] = list(hd.sr.ObservationContext(observer_device_context=observer))
    finding = hd.sr.CodeContentItem(name=FINDING, value=PNEUMONIA, relationship_type="CONTAINS")
    children: list[Dataset] = []
    if prediction.refused:
        children.append(hd.sr.CodeContentItem(name=RESULT, value=RESULTS["REFUSED"],
                                              relationship_type="HAS PROPERTIES"))
        children.append(_text(REFUSAL_REASON, prediction.refusal_reason or "refused"))
    else:
        children.append(_num(P_PNEUMONIA, float(prediction.probability or 0.0)))
        children.append(hd.sr.CodeContentItem(name=RESULT, value=RESULTS[str(prediction.label)],
                                              relationship_type="HAS PROPERTIES"))
        if prediction.level in LEVELS:
            children.append(hd.sr.CodeContentItem(name=LEVEL, value=LEVELS[str(prediction.level)],
                                                  relationship_type="HAS PROPERTIES"))
            if prediction.level_band is not None:
                children.append(_text(LEVEL_FIGURES, prediction.level_band.figures()))
        if prediction.p_viral is not None:
            children.append(_num(P_VIRAL, prediction.p_viral))
        if prediction.overridden:
            children.append(_text(REFUSAL_REASON, f"overridden: {prediction.refusal_reason}"))
    children.append(_num(THRESHOLD, prediction.threshold))
    children.append(_text(THRESHOLD_SOURCE, prediction.threshold_source))
    algorithm = hd.sr.AlgorithmIdentification(
        name=prediction.model_name, version=prediction.model_version,
        parameters=[f"model.tflite sha256 {prediction.model_sha256}", f"software pneumo-desktop {__version__}"],
    )
    children.extend(algorithm)
    children.append(hd.sr.ImageContentItem(
        name=SOURCE_IMAGE, referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID, relationship_type="INFERRED FROM",
    ))
    finding.ContentSequence = PydicomSequence(children)
    items.append(finding)
    items.append(_text(COMMENT, NOTICE, relation="CONTAINS"))
    root.ContentSequence = PydicomSequence(items)
    return root


def build_results(source: Dataset, grey: np.ndarray, explanation: Explanation) -> ResultObjects:
    """The SR and the SC for one scored source instance (`source`: its header, pixel data not needed)."""
    prediction = explanation.prediction
    uids = result_uids(source.StudyInstanceUID, source.SOPInstanceUID, prediction.model_sha256)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=build_content(source, prediction),
        series_instance_uid=uids.sr_series, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance, instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="Pneumo Desktop AI result (research use only)",
    )
    _fix_dates(sr, source)
    rgb = render_result(grey, explanation.cam, prediction)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),
        series_instance_uid=uids.sc_series, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance, instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER, transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description="Pneumo Desktop heat map (research use only)",
    )
    # highdicom needs an orientation for a patient image; the picture is the source's, so is its orientation
    # (empty when the source has none: Type 2C in the General Image module)
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.Laterality = source.get("Laterality", "")  # Type 2C (paired body parts): the source's, or empty
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{NOTICE}. Grad-CAM of {prediction.model_name} {prediction.model_version}."
    sc.DerivationDescription = "Grad-CAM heat map blended onto the source image; result text burned in"
    sc.SourceImageSequence = [_reference(source)]
    _fix_dates(sc, source)
    return ResultObjects(sr=sr, sc=sc, uids=uids)


def _reference(source: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def _fix_dates(ds: Dataset, source: Dataset) -> None:
    """Content date/time: the source's, so that the same instance always gives byte-identical results."""
    for key in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
                "SeriesDate", "SeriesTime"):
        if key in ds:
            base = "StudyDate" if key.endswith("Date") else "StudyTime"
            value = source.get(key.replace("Instance", "").replace("Creation", "Content"), source.get(base))
            if value:
                setattr(ds, key, value)


def encode(ds: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, file meta, the transfer syntax its meta names)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
