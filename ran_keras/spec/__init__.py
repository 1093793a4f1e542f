"""Network specs: architectures as validated, JSON round-trippable data (``network``), and the
spec-to-spec transforms (``transforms``). Pure Python: no TensorFlow."""

from ran_keras.spec.network import (IMAGENET_MEAN, IMAGENET_STD, PADDING_CONVENTIONS, SPEC_FORMAT, SPEC_VERSION,
                                    WEIGHT_INITS, BlockSpec, FeatureInfo, NetworkSpec, Site, load_sidecar, sidecar_path)
from ran_keras.spec.transforms import (ROUNDINGS, afrb_sites, drop_path_rates, make_divisible, map_blocks,
                                       model_drop_path, prune_hidden, realize_afrbs, scale_depth, scale_width, scale_width_depth,
                                       stage_depths, to_codesign, with_activation, with_drop_path)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PADDING_CONVENTIONS", "WEIGHT_INITS", "BlockSpec", "FeatureInfo", "NetworkSpec", "ROUNDINGS", "SPEC_FORMAT", "SPEC_VERSION", "Site", "afrb_sites",
           "drop_path_rates", "load_sidecar", "make_divisible", "map_blocks", "model_drop_path", "prune_hidden", "realize_afrbs", "scale_depth",
           "scale_width", "scale_width_depth", "sidecar_path", "stage_depths", "to_codesign", "with_activation", "with_drop_path"]
