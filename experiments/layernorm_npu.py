"""What the export's LayerNorm rewrite does on Ethos-U: each model exported to int8 twice, with
Keras' LayerNorm (channel MEANs, which Vela leaves to the CPU) and with ``ChannelLayerNorm`` (the
default), compiled by Vela for every target.

    python -m ran_keras.experiments.layernorm_npu --models=convnext_tiny,ran_i_tiny \\
        --targets=u55-128,u65-256,u85-256,u85-512 --out_dir=runs/layernorm_npu

Writes ``layernorm_npu.json`` and ``layernorm_npu.md`` (one row per model, target and form: CPU
ops, total NPU cycles, cycles in the LayerNorm ops, NPU-only FPS) into --out_dir. Vela's FPS
counts NPU cycles only, so the Keras form's figure leaves its CPU MEANs out.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List

from absl import app, flags

FLAGS = flags.FLAGS
#: a layer of a LayerNorm in Vela's per-layer CSV ('..._ln/...' in the TFLite tensor names)
_LN = re.compile(r"_ln(/|;|$)")


def _define() -> None:
    def define(kind: str, name: str, default, help_text: str) -> None:
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)
    define("list", "models", ["convnext_tiny", "ran_i_tiny"], "registered models or spec .json files")
    define("list", "targets", ["u55-128", "u65-256", "u85-256", "u85-512"], "Vela targets")
    define("integer", "input_size", 224, "input height and width")
    define("integer", "samples", 8, "calibration photos")
    define("list", "forms", ["keras", "npu"], "LayerNorm forms to export: keras (MEANs) and/or npu (the rewrite)")
    define("string", "out_dir", "runs/layernorm_npu", "output folder")


def measure(model_name: str, targets: List[str], input_size: int, samples: int, out: Path,
            forms=("keras", "npu")) -> List[Dict[str, Any]]:
    from ran_keras import registry
    from ran_keras.builder import build_model
    from ran_keras.export import calibration as cal
    from ran_keras.export.tflite import to_tflite
    from ran_keras.export.vela import run_vela
    from ran_keras.rewrite.layernorm import spatial_layer_norms
    spec = registry.resolve_spec(model_name)
    model = build_model(spec, (input_size, input_size, 3), classes=1000, seed=0)
    images, _ = cal.calibration_set("photos", samples, input_size, spec=spec, channels=3, seed=0)
    rows = []
    for form in forms:
        npu = {"keras": False, "npu": True}[form]
        print(f"{spec.name}: converting ({form} LayerNorm) ...", flush=True)
        path = out / f"{spec.name}_{form}.tflite"
        path.write_bytes(to_tflite(model, images, npu_layer_norm=npu))
        for target in targets:
            rep = run_vela(path, target, out / "vela" / f"{spec.name}_{form}" / target)
            ln_cycles = sum(l.cycles for l in rep.layers if _LN.search(l.name))
            rows.append({"model": spec.name, "target": target, "layernorm": form,
                         "spatial_layernorms": len(spatial_layer_norms(model)),
                         "cpu_ops": rep.cpu_op_count, "cycles_total": rep.cycles_total,
                         "layernorm_cycles": ln_cycles, "fps_npu_only": rep.inferences_per_second})
            print(f"  {target}: {rep.cpu_op_count} CPU ops, {rep.cycles_total:,} cycles "
                  f"({ln_cycles:,} in LayerNorms), {rep.inferences_per_second:.2f} FPS", flush=True)
    return rows


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | target | LayerNorm as | CPU ops | NPU cycles | of which LayerNorm | FPS (NPU only) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']} | {r['layernorm']} | {r['cpu_ops']} | {r['cycles_total']:,} | "
                     f"{r['layernorm_cycles']:,} | {r['fps_npu_only']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    from ran_keras import fileio
    out = Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    failed = []
    for name in FLAGS.models:
        try:
            rows += measure(name, list(FLAGS.targets), FLAGS.input_size, FLAGS.samples, out, FLAGS.forms)
        except Exception as err:  # finish the others, report this one
            failed.append(f"{name}: {type(err).__name__}: {err}")
            print(f"FAILED {failed[-1]}", file=sys.stderr, flush=True)
    fileio.write_json(out / "layernorm_npu.json", {"rows": rows, "failed": failed})
    fileio.write_text(out / "layernorm_npu.md", markdown(rows))
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
