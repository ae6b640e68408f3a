"""Pneumo Desktop: chest X-ray pneumonia estimation with Grad-CAM. Research use only, not a medical device."""

__version__ = "0.1.0"

RESEARCH_USE_STATEMENT = (
    "Research use only. Not a medical device: the output is a model estimate, "
    "not a diagnosis, and must not be used for clinical decisions."
)
