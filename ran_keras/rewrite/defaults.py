"""Defaults of the rewriter, importable without numpy (``ran fold --help`` shows them). The AFRB
collapse band is ``ran_keras.blocks.AFRB_BAND`` (shared with the search)."""

#: sample images for the output-change check of a fold
FOLD_SAMPLES = 4
#: what to do with linear chains outside AFRBs ('smaller': merge where it costs no more MACs)
CHAIN_POLICIES = ("smaller", "always", "none")
