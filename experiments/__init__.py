"""absl-flag entry points: train, search, scale (installed as ran_keras.experiments)."""
