"""A scored instance's results as DICOM: a Comprehensive SR and a colour Secondary Capture in its study.

Both are written directly with pydicom (this app's own construction, no SR library): the SR Document
IOD (PS3.3 A.35.3) with the content tree of sr_content.py (template PNEUMO-CXR-1, docs/DICOM_NODE.md),
and the Secondary Capture Image IOD (PS3.3 A.8.1). Patient and study attributes are copied from the
source, so both join its study (same Study Instance UID, a new series each). tests/test_dicom_node.py
checks both with dciodvfy (dicom3tools).

UIDs are derived from the source SOP Instance UID and the model's sha256 (result_uids), and every date and
time is the source's, so scoring the same instance again after a crash produces byte-identical objects: a
receiver keeps one copy.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from pneumo_desktop import __version__
from pneumo_desktop.core.dicom_node.result_image import NOTICE, render_result_rgbx, rgb_of
from pneumo_desktop.core.dicom_node.sr_content import (
    CONTENT_SEQUENCE,
    MANUFACTURER,
    PNEUMONIA,
    TITLE,
    code_item,
    content_sequence,
)
from pneumo_desktop.core.errors import PneumoError
from pneumo_desktop.core.runtime import Explanation, Prediction

__all__ = [
    "PNEUMONIA",
    "ResultBuildError",
    "ResultObjects",
    "ResultUids",
    "build_results",
    "build_sc",
    "build_sr",
    "encode",
    "result_uids",
]

SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
JPEG_QUALITY = 95  # the burned-in text stays sharp; ~150-200 KB for a 1024 px picture instead of ~2.5 MB
COMPREHENSIVE_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
IMPLEMENTATION_VERSION = f"PNEUMO_{__version__}"[:16]  # PS3.7 D.3.3.2: at most 16 characters

# Copied from the source when present: Patient (C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2).
_COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "PatientAge", "PatientSize", "PatientWeight",
)
# Type 2 of those modules: present even when the source has no value
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")


class ResultBuildError(PneumoError):
    """The source's header lacks what its results must reference (that instance fails alone)."""


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


IMPLEMENTATION_CLASS_UID = _name_uid("implementation class\npneumo-desktop")  # this app's, fixed


def _device_uid(model_sha256: str) -> str:
    return _name_uid(f"device\n{model_sha256}")


def _source_uids(source: Dataset) -> tuple[str, str, str, str]:
    """(study, series, SOP class, SOP instance) of the source; each must be there to be referenced."""
    values = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        value = str(source.get(keyword, "") or "")
        if not value:
            raise ResultBuildError(f"the source has no {keyword}: its results could not reference it")
        values.append(value)
    return values[0], values[1], values[2], values[3]


def _content_date_time(source: Dataset) -> tuple[str, str]:
    """The source's content (else study) date and time: the same instance always gives the same objects.
    Only a source with neither gets the time of scoring (the SR's Content Date is Type 1)."""
    date = str(source.get("ContentDate") or source.get("StudyDate") or "")
    clock = str(source.get("ContentTime") or source.get("StudyTime") or "")
    if not date:
        date, clock = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    return date, clock or "000000"


def _copy(source: Dataset, target: Dataset, keywords: tuple[str, ...]) -> None:
    """The source's elements as they are (value, VR, character set); the source is not changed afterwards."""
    for keyword in keywords:
        element = source.data_element(keyword) if keyword in source else None
        if element is not None:
            target.add(element)


def _base(source: Dataset, sop_class: str, sop_uid: str, series_uid: str, series_number: int,
          modality: str, description: str) -> Dataset:
    """SOP Common, Patient, General Study, the series and General Equipment: what every result has."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    _copy(source, ds, _COPIED)
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    date, clock = _content_date_time(source)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, clock
    ds.ContentDate, ds.ContentTime = date, clock
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = modality, series_uid, series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = int(source.get("InstanceNumber") or 1)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "Pneumo Desktop"
    ds.SoftwareVersions = __version__
    return ds


def build_sr(source: Dataset, prediction: Prediction, uids: ResultUids) -> Dataset:
    """The Comprehensive SR: SR Document Series, General and Content modules (PS3.3 C.17.1-C.17.3)."""
    study, series, sop_class, sop_uid = _source_uids(source)
    ds = _base(source, COMPREHENSIVE_SR_SOP_CLASS, uids.sr_instance, uids.sr_series, SR_SERIES_NUMBER, "SR",
               "Pneumo Desktop AI result (research use only)")
    ds.ReferencedPerformedProcedureStepSequence = []  # Type 2: no procedure step is known
    ds.PerformedProcedureCodeSequence = []  # Type 2
    ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag = "COMPLETE", "UNVERIFIED", "PRELIMINARY"
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = sop_class, sop_uid
    series_item = Dataset()
    series_item.SeriesInstanceUID = series
    series_item.ReferencedSOPSequence = [reference]
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    evidence.ReferencedSeriesSequence = [series_item]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]  # Type 1C: the report references the X-ray
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code_item(TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    # The content tree, encoded (sr_content), as a raw element: pydicom writes it as it is, since the dataset
    # says it is in the encoding it will be written in (set_original_encoding), and parses it when read.
    encodings = convert_encodings(ds.SpecificCharacterSet) if "SpecificCharacterSet" in ds else default_encoding
    charset = (encodings,) if isinstance(encodings, str) else tuple(encodings)
    value = content_sequence(prediction, _device_uid(prediction.model_sha256), sop_class, sop_uid, charset)
    ds[CONTENT_SEQUENCE] = RawDataElement(BaseTag(CONTENT_SEQUENCE), "SQ", len(value), value, 0, False, True)
    ds.set_original_encoding(False, True, encodings)  # what pydicom compares with the dataset's own
    return ds


def build_sc(source: Dataset, rgb: np.ndarray, prediction: Prediction, uids: ResultUids,
             compress: bool = True) -> Dataset:
    """The Secondary Capture Image (PS3.3 A.8.1): the picture of render_result, 8-bit colour, as JPEG
    Baseline (or, with compress=False, uncompressed RGB in Explicit VR Little Endian).

    `rgb` is (H, W, 3) RGB, or (H, W, 4) RGBX as render_result_rgbx draws it (the fourth byte ignored)."""
    _study, _series, sop_class, sop_uid = _source_uids(source)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB (or RGBX) uint8 picture, got {rgb.dtype} {rgb.shape}")
    ds = _base(source, SC_SOP_CLASS, uids.sc_instance, uids.sc_series, SC_SERIES_NUMBER, "OT",
               "Pneumo Desktop heat map (research use only)")
    # General Series: the body part, and Laterality (Type 2C: for paired body parts only, so absent for a
    # chest; empty, i.e. unknown, when the source does not say which part it shows)
    _copy(source, ds, ("BodyPartExamined",))
    laterality = str(source.get("Laterality") or "")
    if not laterality and str(source.get("ImageLaterality") or "") in ("L", "R"):
        laterality = str(source.ImageLaterality)
    if laterality or "BodyPartExamined" not in source:
        ds.Laterality = laterality
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = "Pneumo Desktop"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = source.get("PatientOrientation", "")  # the source's picture, so its orientation
    ds.BurnedInAnnotation = "YES"
    ds.ImageComments = f"{NOTICE}. Grad-CAM of {prediction.model_name} {prediction.model_version}."
    ds.DerivationDescription = "Grad-CAM heat map blended onto the source image; result text burned in"
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = sop_class, sop_uid
    ds.SourceImageSequence = [reference]
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if compress:
        _jpeg_pixels(ds, source, rgb)
    else:
        _copy_lossy_history(source, ds)
        ds.PhotometricInterpretation = "RGB"
        pixels = np.ascontiguousarray(rgb if rgb.shape[2] == 3 else rgb_of(rgb)).tobytes()
        if len(pixels) % 2:
            pixels += b"\0"  # OB values have an even length
        ds[0x7FE00010] = DataElement(0x7FE00010, "OB", pixels)
    return ds


def _copy_lossy_history(source: Dataset, ds: Dataset) -> None:
    if str(source.get("LossyImageCompression", "")) == "01":  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
        ds.LossyImageCompression = "01"
        _copy(source, ds, ("LossyImageCompressionMethod", "LossyImageCompressionRatio"))


def _values(source: Dataset, keyword: str) -> list[str]:
    value = source.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple, MultiValue)) else [str(value)]


def _jpeg_pixels(ds: Dataset, source: Dataset, rgb: np.ndarray) -> None:
    """JPEG Baseline pixel data (4:2:2, YBR_FULL_422, PS3.5 8.2.1): a sixteenth of the RGB bytes to store,
    queue and send. The picture is a rendering (the X-ray, its map and text), not the X-ray itself."""
    buffer = io.BytesIO()
    height, width = rgb.shape[:2]
    if rgb.shape[2] == 4:  # Pillow encodes RGBX as it is: the same JPEG as from the RGB picture, one copy less
        image = Image.frombuffer("RGBX", (width, height), np.ascontiguousarray(rgb), "raw", "RGBX", 0, 1)
    else:
        image = Image.fromarray(np.ascontiguousarray(rgb))
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=1)
    frame = buffer.getvalue()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ratio = height * width * 3 / len(frame)
    # The lossy history: the source's steps (when it gives them consistently), then this one.
    methods, ratios = _values(source, "LossyImageCompressionMethod"), _values(source, "LossyImageCompressionRatio")
    if str(source.get("LossyImageCompression", "")) != "01" or len(ratios) != len(methods):
        methods, ratios = [], []
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    element = DataElement(0x7FE00010, "OB", encapsulate([frame]), is_undefined_length=True)
    ds[0x7FE00010] = element


def build_results(source: Dataset, grey: np.ndarray, explanation: Explanation, compress: bool = True,
                  ) -> ResultObjects:
    """The SR and the SC for one scored source instance (`source`: its header, pixel data not needed).

    `explanation.cam` may be at the grey image's size or already at the picture's (see result_image).
    The SC is JPEG Baseline unless compress=False (a peer that does not take it gets it decompressed by
    send.PeerConnection)."""
    prediction = explanation.prediction
    _source_uids(source)
    uids = result_uids(str(source.StudyInstanceUID), str(source.SOPInstanceUID), prediction.model_sha256)
    sr = build_sr(source, prediction, uids)
    sc = build_sc(source, render_result_rgbx(grey, explanation.cam, prediction), prediction, uids, compress)
    return ResultObjects(sr=sr, sc=sc, uids=uids)


def encode(ds: Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, file meta, the transfer syntax its meta names)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
