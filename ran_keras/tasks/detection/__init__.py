"""Building blocks of a slim two-stage Faster R-CNN (RAN-i's detector, paper Sec. 3.5, Appendix E).

Pure functions with torchvision's semantics (GeneralizedRCNN with one stride-32 feature map, as in
Arm's reference code): anchors, box coding and NMS, matching and sampling, RoIAlign, losses,
proposal selection and detection post-processing, the COCO evaluator and the input pipelines.
Tensors are batched and padded to fixed sizes with validity masks, so everything runs inside
``tf.function``. Import the sub-modules directly; importing this package imports nothing heavy.
"""
