"""The SR's content tree, template PNEUMO-CXR-1 (docs/DICOM_NODE.md), built directly on pydicom.

Content items are pydicom Datasets with the SR content item attributes of PS3.3 C.17.3 (Relationship
Type, Value Type, Concept Name Code Sequence, and the value's own attributes), each encoded by pydicom's
own writer (Explicit VR Little Endian, the SR's transfer syntax) into a sequence item. Most of a report
is the same for every instance of a model: the observer context, the algorithm identification (TID 4019),
the coded results and the notice. Those items are encoded once and their bytes reused; only the numbers,
the texts that vary and the reference to the source image are encoded for each instance. The Content
Sequence's value (content_sequence) is those items framed with defined lengths; results_dicom puts it
into the SR as a raw element, which pydicom writes as it is and parses when someone reads it.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sr.coding import Code
from pydicom.valuerep import DSfloat

from pneumo_desktop import __version__
from pneumo_desktop.core.dicom_node.result_image import NOTICE
from pneumo_desktop.core.runtime import Prediction

MANUFACTURER = "Pneumo Desktop (open source)"
SCHEME = "99PNEUMO"  # private coding scheme for concepts no standard names (documented in DICOM_NODE.md)

# Standard concepts (DCM: PS3.16 Annex D; LN: LOINC; SCT: SNOMED CT; UCUM)
TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
FINDING = Code("121071", "DCM", "Finding")
SOURCE_IMAGE = Code("121112", "DCM", "Source of Measurement")
COMMENT = Code("121106", "DCM", "Comment")
NO_UNITS = Code("1", "UCUM", "no units")
OBSERVER_TYPE = Code("121005", "DCM", "Observer Type")
DEVICE = Code("121007", "DCM", "Device")
DEVICE_UID = Code("121012", "DCM", "Device Observer UID")
DEVICE_NAME = Code("121013", "DCM", "Device Observer Name")
DEVICE_MANUFACTURER = Code("121014", "DCM", "Device Observer Manufacturer")
DEVICE_MODEL = Code("121015", "DCM", "Device Observer Model Name")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
# This app's own concepts
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

CONTAINS, PROPERTIES, OBS_CONTEXT = "CONTAINS", "HAS PROPERTIES", "HAS OBS CONTEXT"
CONCEPT_MOD, INFERRED_FROM = "HAS CONCEPT MOD", "INFERRED FROM"
TEXT_LIMIT = 1024  # characters kept of a free text (a refusal reason is one sentence; UT allows far more)
CONTENT_SEQUENCE = 0x0040A730
Charset = tuple[str, ...]  # Python codec names of the report's Specific Character Set (pydicom's)


def encode_item(item: Dataset, charset: Charset) -> bytes:
    """A sequence item with a defined length: (FFFE,E000), its length, the item's elements (pydicom)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, item, list(charset))
    body = buffer.getvalue()
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def sequence_element(tag: int, value: bytes) -> bytes:
    """An SQ element with a defined length (Explicit VR Little Endian: tag, 'SQ', 2 reserved bytes, length)."""
    return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, b"SQ", len(value)) + value


def code_item(code: Code) -> Dataset:
    """A code sequence item (Code Value, Coding Scheme Designator, Code Meaning)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


@lru_cache(maxsize=256)
def _code_sequence_item(code: Code) -> Dataset:
    return code_item(code)


def _item(relationship: str, value_type: str, name: Code) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code_sequence_item(name)]
    return item


def code_content(relationship: str, name: Code, value: Code) -> Dataset:
    item = _item(relationship, "CODE", name)
    item.ConceptCodeSequence = [_code_sequence_item(value)]
    return item


def text_content(relationship: str, name: Code, value: str) -> Dataset:
    item = _item(relationship, "TEXT", name)
    item.TextValue = value[:TEXT_LIMIT] or "-"  # TEXT is Type 1: never empty
    return item


@lru_cache(maxsize=256)
def _code_bytes(relationship: str, name: Code, value: Code, charset: Charset) -> bytes:
    return encode_item(code_content(relationship, name, value), charset)


@lru_cache(maxsize=256)
def _short_text_bytes(relationship: str, name: Code, value: str, charset: Charset) -> bytes:
    return encode_item(text_content(relationship, name, value), charset)


def _text_bytes(relationship: str, name: Code, value: str, charset: Charset) -> bytes:
    """A TEXT item; short texts recur (sources, level figures, reasons) and are encoded once."""
    if len(value) <= 200:
        return _short_text_bytes(relationship, name, value, charset)
    return encode_item(text_content(relationship, name, value), charset)


def ds_text(value: float) -> str:
    """A probability or threshold (0..1) as a DS string, six decimals (16 characters is DS's limit)."""
    text = f"{value:.6f}"
    return text if len(text) <= 16 else f"{value:.9g}"[:16]


def num_content(relationship: str, name: Code, value: float) -> Dataset:
    """A NUM item: the value as Numeric Value (DS) and Floating Point Value (FD), unit 'no units'."""
    text = ds_text(value)
    measured = Dataset()
    measured.MeasurementUnitsCodeSequence = [_code_sequence_item(NO_UNITS)]
    measured.NumericValue = DSfloat(text)
    measured.FloatingPointValue = float(text)  # the same number, so the two never disagree
    item = _item(relationship, "NUM", name)
    item.MeasuredValueSequence = [measured]
    return item


def image_content(relationship: str, name: Code, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class_uid
    reference.ReferencedSOPInstanceUID = sop_instance_uid
    item = _item(relationship, "IMAGE", name)
    item.ReferencedSOPSequence = [reference]
    return item


def uidref_content(relationship: str, name: Code, uid: str) -> Dataset:
    item = _item(relationship, "UIDREF", name)
    item.UID = uid
    return item


def observer_context(device_uid: str, model_label: str) -> list[Dataset]:
    """TID 1002 observer context for a device observer (TID 1004): the same for every report of a model."""
    return [
        code_content(OBS_CONTEXT, OBSERVER_TYPE, DEVICE),
        uidref_content(OBS_CONTEXT, DEVICE_UID, device_uid),
        text_content(OBS_CONTEXT, DEVICE_NAME, "Pneumo Desktop"),
        text_content(OBS_CONTEXT, DEVICE_MANUFACTURER, MANUFACTURER),
        text_content(OBS_CONTEXT, DEVICE_MODEL, model_label),
    ]


def algorithm_identification(name: str, version: str, sha256: str) -> list[Dataset]:
    """TID 4019 algorithm identification: name, version, and the parameters that pin the exact model."""
    return [
        text_content(CONCEPT_MOD, ALGORITHM_NAME, name),
        text_content(CONCEPT_MOD, ALGORITHM_VERSION, version),
        text_content(CONCEPT_MOD, ALGORITHM_PARAMETERS, f"model.tflite sha256 {sha256}"),
        text_content(CONCEPT_MOD, ALGORITHM_PARAMETERS, f"software pneumo-desktop {__version__}"),
    ]


@lru_cache(maxsize=16)
def _observer_bytes(device_uid: str, model_label: str, charset: Charset) -> bytes:
    return b"".join(encode_item(item, charset) for item in observer_context(device_uid, model_label))


@lru_cache(maxsize=16)
def _algorithm_bytes(name: str, version: str, sha256: str, charset: Charset) -> bytes:
    return b"".join(encode_item(item, charset) for item in algorithm_identification(name, version, sha256))


def finding_properties(prediction: Prediction, charset: Charset) -> list[bytes]:
    """The finding's HAS PROPERTIES children (encoded): the result, its numbers and the threshold's source."""
    children: list[bytes] = []
    if prediction.refused:
        children.append(_code_bytes(PROPERTIES, RESULT, RESULTS["REFUSED"], charset))
        children.append(_text_bytes(PROPERTIES, REFUSAL_REASON, prediction.refusal_reason or "refused", charset))
    else:
        children.append(encode_item(num_content(PROPERTIES, P_PNEUMONIA, float(prediction.probability or 0.0)),
                                    charset))
        children.append(_code_bytes(PROPERTIES, RESULT, RESULTS[str(prediction.label)], charset))
        if prediction.level in LEVELS:
            children.append(_code_bytes(PROPERTIES, LEVEL, LEVELS[str(prediction.level)], charset))
            if prediction.level_band is not None:
                children.append(_text_bytes(PROPERTIES, LEVEL_FIGURES, prediction.level_band.figures(), charset))
        if prediction.p_viral is not None:
            children.append(encode_item(num_content(PROPERTIES, P_VIRAL, prediction.p_viral), charset))
        if prediction.overridden:
            children.append(_text_bytes(PROPERTIES, REFUSAL_REASON, f"overridden: {prediction.refusal_reason}",
                                        charset))
    children.append(encode_item(num_content(PROPERTIES, THRESHOLD, prediction.threshold), charset))
    children.append(_text_bytes(PROPERTIES, THRESHOLD_SOURCE, prediction.threshold_source, charset))
    return children


def content_sequence(prediction: Prediction, device_uid: str, source_sop_class: str, source_sop_uid: str,
                     charset: Charset) -> bytes:
    """The value of the root container's Content Sequence (template PNEUMO-CXR-1, see docs/DICOM_NODE.md):
    its items, encoded, each with a defined length."""
    children = b"".join([
        *finding_properties(prediction, charset),
        _algorithm_bytes(prediction.model_name, prediction.model_version, prediction.model_sha256, charset),
        encode_item(image_content(INFERRED_FROM, SOURCE_IMAGE, source_sop_class, source_sop_uid), charset),
    ])
    finding = _item(CONTAINS, "CODE", FINDING)
    finding.ConceptCodeSequence = [_code_sequence_item(PNEUMONIA)]
    # the finding's own Content Sequence is its last element (the highest tag of a content item): appended
    finding_item = encode_item(finding, charset)
    body = finding_item[8:] + sequence_element(CONTENT_SEQUENCE, children)
    finding_bytes = struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    observer = _observer_bytes(device_uid, f"{prediction.model_name} {prediction.model_version}", charset)
    return observer + finding_bytes + _short_text_bytes(CONTAINS, COMMENT, NOTICE, charset)
