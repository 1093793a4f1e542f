"""Float vs post-training-quantised (PTQ) int8 vs quantisation-aware-trained (QAT) int8 accuracy on
scikit-learn digits at 32x32, every figure measured by the LiteRT interpreter on the held-out split.

    python -m ran_keras.experiments.qat_study --out_dir=runs/qat_study --seeds=0,1,2

Three narrow networks (width 0.25, stem stride 1, 32x32): ``digits_derived`` (the digits demo
SuperNet with every other AFRB collapsed, the rest IBNs: the shape a search derives), ``gt``
(RAN-e-GT's layout, hard-swish) and ``lite`` (EfficientNet-Lite-B0's layout, ReLU6). Per seed: float
training (``--float_epochs``, the digits recipe), PTQ of its model.keras (64 training images as
representative data), QAT fine-tuning from it (``--qat_epochs`` at ``--qat_lr``) with the same
trainer (``--qat``), then all three .tflite files (fp32, PTQ int8, QAT int8) on the 360 held-out
digits. Writes ``qat_study.json`` and ``qat_study.md`` into --out_dir; a failed run is reported and
the others finish.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from absl import app, flags

FLAGS = flags.FLAGS
NETWORKS = ("digits_derived", "gt", "lite")


def _define() -> None:
    def define(kind: str, name: str, default, help_text: str) -> None:
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)
    define("string", "out_dir", "runs/qat_study", "output folder (one run folder per network and seed)")
    define("list", "seeds", ["0", "1", "2"], "seeds")
    define("list", "networks", list(NETWORKS), f"networks, from {', '.join(NETWORKS)}")
    define("integer", "float_epochs", 10, "float training epochs")
    define("integer", "qat_epochs", 3, "QAT fine-tuning epochs")
    define("float", "qat_lr", 3e-4, "QAT peak learning rate")


def network_spec(name: str):
    """The narrow 32x32 networks of the study."""
    from ran_keras.registry import get_spec
    from ran_keras.search.prelu import afrb_sites, demo_supernet_spec, derive_spec
    from ran_keras.spec import scale_width
    if name == "digits_derived":
        supernet = demo_supernet_spec()
        alphas = [1.0 if i % 2 else 0.0 for i in range(len(afrb_sites(supernet)))]
        return derive_spec(supernet, alphas, name="digits_derived", input_size=32)
    base = {"gt": "ran_e_gt", "lite": "efficientnet_lite_b0"}.get(name)
    if base is None:
        raise ValueError(f"unknown network {name!r}; accepted: {', '.join(NETWORKS)}")
    spec = scale_width(get_spec(base), 0.25, rounding="round", head=True, name=f"{name}_digits")
    return spec.replace(stem=(spec.stem[0].replace(stride=1),), input_size=32, bn_momentum=0.9,
                        input_mean=(127.5,), input_std=(127.5,))


def _data(cfg, spec):
    """(held-out images, labels, 64 training images) as the trainer normalises them."""
    import numpy as np
    from ran_keras.backend import tf
    from ran_keras.tasks import make_task
    task = make_task(cfg, spec)
    task.setup(tf.distribute.get_strategy())
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in task.build_inputs(False)])
    calib = np.concatenate([batch[0].numpy() for batch in task.build_inputs(True).take(2)])[:64]
    return np.concatenate(xs), np.concatenate(ys).argmax(-1), calib


def _accuracy(tflite: bytes, images, labels) -> float:
    import numpy as np
    from ran_keras.export.tflite import run_tflite
    out, _ = run_tflite(tflite, images, want_logits=False)
    return float(np.mean(out.argmax(1) == labels))


def one_run(name: str, seed: int, out: Path) -> Dict[str, Any]:
    from ran_keras.builder import load_model
    from ran_keras.export.tflite import to_tflite
    from ran_keras.train.config import resolve_config
    from ran_keras.train.trainer import train
    spec = network_spec(name)
    common = dict(seed=seed, log_every=1000)
    float_dir, qat_dir = out / f"{name}_s{seed}" / "float", out / f"{name}_s{seed}" / "qat"
    cfg = resolve_config("digits", dict(common, model_dir=str(float_dir), epochs=FLAGS.float_epochs))
    train(cfg, spec, log=lambda m: None)
    qcfg = resolve_config("digits", dict(common, model_dir=str(qat_dir), epochs=FLAGS.qat_epochs, qat=True,
                                         init_model=str(float_dir / "model.keras"), learning_rate=FLAGS.qat_lr,
                                         warmup_epochs=0))
    train(qcfg, spec, log=lambda m: None)
    images, labels, calib = _data(cfg, spec)
    model = load_model(float_dir / "model.keras")
    row = {"network": name, "seed": seed, "held_out": int(len(labels)),
           "float": _accuracy(to_tflite(model, int8=False), images, labels),
           "ptq_int8": _accuracy(to_tflite(model, calib), images, labels),
           "qat_int8": _accuracy((qat_dir / "model_int8.tflite").read_bytes(), images, labels)}
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    import numpy as np
    lines = ["| network | seeds | float (fp32 TFLite) | PTQ int8 | QAT int8 | QAT - float |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["network"] for r in rows):
        rs = [r for r in rows if r["network"] == name]
        cell = lambda k: f"{100 * np.mean([r[k] for r in rs]):.2f} ({', '.join(f'{100 * r[k]:.1f}' for r in rs)})"  # noqa: E731
        gap = 100 * (np.mean([r["qat_int8"] for r in rs]) - np.mean([r["float"] for r in rs]))
        lines.append(f"| {name} | {len(rs)} | {cell('float')} | {cell('ptq_int8')} | {cell('qat_int8')} | {gap:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    from ran_keras import fileio
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for name in FLAGS.networks:
        for seed in FLAGS.seeds:
            print(f"{name} seed {seed}: float {FLAGS.float_epochs} epochs, QAT {FLAGS.qat_epochs} ...", flush=True)
            try:
                rows.append(one_run(name, int(seed), out))
            except Exception as err:  # finish the others, report this one
                failed.append(f"{name} seed {seed}: {type(err).__name__}: {err}")
                print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
            fileio.write_json(out / "qat_study.json", {"rows": rows, "failed": failed})
    fileio.write_text(out / "qat_study.md", markdown(rows))
    print(markdown(rows))
    return 1 if failed else 0


def run(argv=None) -> int:
    _define()
    try:
        app.run(lambda a: sys.exit(main(a)), argv=list(sys.argv if argv is None else argv))
    except SystemExit as done:
        return int(done.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(run())
