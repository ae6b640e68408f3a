"""Image loading: any supported file -> 2-D uint8 grey image, or a typed error a person understands.

Files are recognised by their content (magic bytes), never by their extension. Supported: PNG, JPEG,
TIFF, BMP and DICOM. Data deeper than 8 bits (e.g. 12-bit values in a 16-bit container) is scaled by
its real range; DICOM goes through the modality LUT, then the VOI LUT / window, and MONOCHROME1 is
inverted so that bone is always bright.

This module is the public face of image loading; the work is split by job:
  core.image_types  LoadedImage, the ImageLoadError tree, limits, shared pixel helpers
  core.formats      format sniffing (magic bytes)
  core.reading      safe reading of one file (regular files only, size cap)
  core.walk         folder walking (find_images)
  core.decoding     Pillow formats and the dispatch by format
  core.jpeg         12-bit and lossless JPEG through GDCM
  core.dicom        DICOM through pydicom
  core.decoder_noise  the decoder libraries' warnings and logs kept off the terminal
Importing it changes nothing process-wide.
"""

from __future__ import annotations

from pneumo_desktop.core.decoding import decode_image, load_image
from pneumo_desktop.core.formats import sniff_format
from pneumo_desktop.core.image_types import (
    MAX_ASPECT_RATIO,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MIN_IMAGE_SIDE,
    MODEL_INPUT_PIXELS,
    SUPPORTED_FORMATS,
    CorruptImageError,
    DicomDecodeError,
    EmptyFileError,
    ImageLoadError,
    ImageTooLargeError,
    ImplausibleGeometryError,
    LoadedImage,
    UnsupportedEncodingError,
    UnsupportedFormatError,
    check_geometry,
    rgb_to_grey,
    scale_to_uint8,
)
from pneumo_desktop.core.messages import clean_reason
from pneumo_desktop.core.reading import read_image_file
from pneumo_desktop.core.walk import find_images

__all__ = [
    "MAX_ASPECT_RATIO", "MAX_FILE_BYTES", "MAX_PIXELS", "MIN_IMAGE_SIDE", "MODEL_INPUT_PIXELS", "SUPPORTED_FORMATS",
    "CorruptImageError", "DicomDecodeError", "EmptyFileError", "ImageLoadError", "ImageTooLargeError",
    "ImplausibleGeometryError", "LoadedImage", "UnsupportedEncodingError", "UnsupportedFormatError",
    "check_geometry", "clean_reason", "decode_image", "find_images", "load_image", "read_image_file",
    "rgb_to_grey", "scale_to_uint8", "sniff_format",
]
