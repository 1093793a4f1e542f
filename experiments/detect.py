"""Train a detector with absl flags (also ``ran detect train``): ``--task=detection`` by default.

    ran detect train --model=rcnn_ran_i_small --dataset=coco/2017 --data_dir=/data/tfds \\
        --backbone_weights=runs/ran_i_small/model.keras --model_dir=runs/rcnn_ran_i_small --strategy=mirrored

Settings come from --recipe (default faster_rcnn: paper Appendix E) and any flag overrides them;
re-running with the same --model_dir resumes. See ``--help``.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from ran_keras.experiments import flags as flags_lib

SUMMARY = ("Train a registered detector (ran detect list) or a detector config .json on COCO (TFDS), the offline "
           "deepforest samples, VOC XML or COCO JSON data. --recipe=faster_rcnn (the default: SGD 0.02 per 16 "
           "images, 26 epochs, x0.1 at 16 and 22) and any flag overrides it. Writes checkpoints, TensorBoard logs, "
           "metrics.csv (eval_AP ...), results.json and MODEL_DIR/detector/ (backbone_rpn.keras, roi_head.keras, "
           "detector.json).")


def main(argv: List[str]) -> int:
    cfg = flags_lib.config_from_flags("faster_rcnn", task="detection")
    from ran_keras.tasks.detection.task import detector_config
    detector_config(cfg)                # a bad --model fails before TensorFlow starts
    from ran_keras.train import trainer
    result = trainer.train(cfg)
    flags_lib.emit_json(result.to_dict())
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    return flags_lib.run_main(main, argv, "ran detect train", SUMMARY)


if __name__ == "__main__":
    sys.exit(run())
