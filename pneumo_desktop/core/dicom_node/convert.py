"""A picture as a Digital X-Ray (for presentation) instance: to try the node out with ordinary images.

The tests, the soak benchmark and docs/DICOM_NODE.md's walk-through send the bundled JPEG samples this way.
Pixels are kept as they are (8-bit MONOCHROME2, uncompressed), so the model sees the same grey values as
when it reads the JPEG itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class Identity:
    patient_id: str
    patient_name: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    accession_number: str = ""


def new_identity(patient_id: str, patient_name: str = "TEST^PATIENT") -> Identity:
    return Identity(patient_id, patient_name, generate_uid(), generate_uid(), generate_uid())


def dx_from_grey(grey: np.ndarray, identity: Identity, *, date: str = "20260101", time: str = "120000") -> Dataset:
    """A DX For Presentation dataset (with file meta) holding the 8-bit grey image."""
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {grey.dtype} {grey.shape}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(identity.sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.PatientID, ds.PatientName = identity.patient_id, identity.patient_name
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", identity.accession_number, ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.Manufacturer = "Pneumo Desktop test converter"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"  # the samples were JPEG files
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(grey.shape[0]), int(grey.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = "128", "256"
    ds.DetectorType = "DIRECT"
    ds.PixelData = np.ascontiguousarray(grey).tobytes()
    return ds
