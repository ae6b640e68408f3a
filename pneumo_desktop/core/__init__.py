"""Qt-free core: image loading, preprocessing, inference, Grad-CAM, batch scoring, model card.

Nothing in this package may import Qt or TensorFlow.
"""
