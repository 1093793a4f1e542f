"""Int8 TFLite export, Vela compilation and reports (installed as ran_keras.export)."""
