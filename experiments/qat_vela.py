"""Vela on QAT int8 exports of full-size registered models: CPU operators and FPS per target.

    python -m ran_keras.experiments.qat_vela --models=ran_e_supernet,ran_e_a,ran_e_b,ran_e_c,ran_e_gt \\
        --targets=u55-128,u65-256 --out_dir=runs/qat_vela

Each model (seeded weights, 224x224, 1000 classes) is quantised with ``ran_keras.quant.quantize``,
its ranges set by ``--passes`` training-mode passes over the offline calibration photos (no
training: this checks the operators Vela gets, not accuracy), converted without representative
data and compiled. Writes ``qat_vela.json`` and ``qat_vela.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS


def _define() -> None:
    def define(kind: str, name: str, default, help_text: str) -> None:
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)
    define("list", "models", ["ran_e_supernet", "ran_e_a", "ran_e_b", "ran_e_c", "ran_e_gt"], "registered models")
    define("list", "targets", ["u55-128", "u65-256"], "Vela targets")
    define("integer", "passes", 2, "training-mode passes over the photos that set the ranges")
    define("string", "out_dir", "runs/qat_vela", "output folder")


def one(name: str, out: Path):
    from ran_keras import registry
    from ran_keras.builder import build_model
    from ran_keras.export import calibration
    from ran_keras.export.flatbuffer import inspect_tflite
    from ran_keras.export.vela import run_vela
    from ran_keras.quant.qat import quantize, to_int8
    spec = registry.resolve_spec(name)
    qat = quantize(build_model(spec, (224, 224, 3), classes=1000, seed=0))
    images, _ = calibration.calibration_set("photos", 8, 224, spec=spec, channels=3)
    for _ in range(FLAGS.passes):
        qat(images, training=True)
    path = out / f"{name}_qat_int8.tflite"
    path.write_bytes(to_int8(qat))
    rows = []
    for target in FLAGS.targets:
        rep = run_vela(path, target, out / "vela" / name / target)
        rows.append({"model": name, "target": target, "cpu_ops": rep.cpu_op_count,
                     "ops": inspect_tflite(path.read_bytes()).op_counts, "fps": rep.inferences_per_second})
        print(f"{name} {target}: {rep.cpu_op_count} CPU ops, {rep.inferences_per_second:.1f} FPS", flush=True)
    return rows


def main(argv) -> int:
    from ran_keras import fileio
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for name in FLAGS.models:
        try:
            rows += one(name, out)
        except Exception as err:  # finish the others, report this one
            failed.append(f"{name}: {type(err).__name__}: {err}")
            print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
    fileio.write_json(out / "qat_vela.json", {"rows": rows, "failed": failed})
    table = ["| model | target | CPU ops | FPS (Vela) |", "|---|---|---|---|"]
    table += [f"| {r['model']} | {r['target']} | {r['cpu_ops']} | {r['fps']:.1f} |" for r in rows]
    fileio.write_text(out / "qat_vela.md", "\n".join(table) + "\n")
    print("\n".join(table))
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
