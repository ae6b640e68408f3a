"""Rebuilds the model that Pneumo Desktop ships (TensorFlow/Keras; never imported by the app)."""
