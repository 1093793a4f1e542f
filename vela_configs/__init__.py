"""Vela system/memory configs and the named targets table (installed as ran_keras.vela_configs)."""
