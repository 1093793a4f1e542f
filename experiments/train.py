"""Train any registered model or spec JSON with absl flags (also ``ran train``).

    python -m ran_keras.experiments.train --model=ran_e_c --dataset=imagenet2012 \\
        --data_dir=/data/tfds --model_dir=runs/ran_e_c --recipe=ran_e --strategy=mirrored

    ran train --recipe=digits --model=runs/search/lambda_0.01/derived_spec.json --model_dir=runs/digits_sub

Re-running with the same --model_dir resumes from the last checkpoint. See ``--help``.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from ran_keras.experiments import flags as flags_lib

SUMMARY = ("Train a registered model (ran list) or a spec .json. Settings come from --recipe (ran_e: paper "
           "Appendix B; convnext: ConvNeXt/RAN-i; digits: offline demo) and any flag overrides them. Writes "
           "checkpoints, TensorBoard logs, metrics.csv, results.json and model.keras + model.spec.json to "
           "--model_dir; re-running with the same --model_dir resumes.")


def main(argv: List[str]) -> int:
    from ran_keras.train.config import model_spec, require_model_dir
    cfg = flags_lib.config_from_flags("ran_e")
    require_model_dir(cfg)
    spec = model_spec(cfg) if cfg.task == "classification" else None   # a bad --model fails before TensorFlow
    if spec is not None:
        flags_lib.check_memory(cfg, spec)   # so does a batch that cannot fit
    from ran_keras.train import trainer
    result = trainer.train(cfg, spec)  # applies --width, --activation, --drop_path_rate to it
    if result.chief:                   # the other workers of a cluster write nothing
        flags_lib.emit_json(result.to_dict())
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    return flags_lib.run_main(main, argv, "ran train", SUMMARY)


if __name__ == "__main__":
    sys.exit(run())
