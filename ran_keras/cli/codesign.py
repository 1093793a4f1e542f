"""``ran codesign``: ConvNeXt -> co-design network (linearise), and its exact fold (paper Sec. 4)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ran_keras.cli.common import CliError, add_json_arg, emit_json, positive_int

DESCRIPTION = """\
The ConvNeXt block / activation co-design (paper Sec. 4, Fig. 8), on saved models with a spec
beside them (x.keras + x.spec.json, as `ran train` and `ran weights import` write them):

  linearise  a ConvNeXt: FRACTION of every block's hidden channels lose their GELU and form the
             lower branch C -> n -> C ('expanded' co-design form; psi after it). Channels: the
             last ones, or 'linearity' (closest to linear on calibration images, weighted by their
             projection; see ran_keras.rewrite.codesign). Changes the function: fine-tune it next.
  fold       a co-design network in the 'expanded' form: each lower branch becomes one C -> C 1x1
             conv, exactly (float64 math); prints the output change on sample images.
             --absorb-layer-scale (psi none): the layer scale goes into both branches' last
             convs too (exact), sparing Ethos-U a full-size MUL per block.

Writes OUTPUT and its spec (OUTPUT with .spec.json)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codesign", help="ConvNeXt co-design: linearise hidden channels, fold the lower branch",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("linearise", "fold"))
    p.add_argument("input", help="saved model (.keras or .h5) with its spec beside it (.spec.json)")
    p.add_argument("output", help="where to write the new model (.keras or .h5)")
    p.add_argument("--fraction", type=float, default=0.4, help="linearise: hidden channels to linearise (0.4)")
    p.add_argument("--criterion", choices=("last", "linearity"), default="last",
                   help="linearise: which channels (default last)")
    p.add_argument("--psi", default="none", help="linearise: activation after the lower branch (none, gelu, exp, "
                                                 "bounded_exp, ...; default none)")
    p.add_argument("--calibration", default=None,
                   help="linearise --criterion linearity: images (photos, a folder, tfds:NAME[:SPLIT]); "
                        "default the export calibration source")
    p.add_argument("--absorb-layer-scale", action="store_true",
                   help="fold: in blocks with psi none also fold the layer scale into both branches' last convs "
                        "(exact; one MUL per block less on Ethos-U)")
    p.add_argument("--samples", type=positive_int, default=16, metavar="N",
                   help="calibration images (linearise) or sample images for the output change (fold); 16")
    add_json_arg(p)
    p.set_defaults(func=cmd_codesign)


def cmd_codesign(args) -> int:
    src, dest = Path(args.input), Path(args.output)
    for path, what in ((src, "input"), (dest, "output")):
        if path.suffix not in (".keras", ".h5"):
            raise CliError(f"{what} must be a .keras or .h5 file, got {str(path)!r}")
    if src.resolve() == dest.resolve():
        raise CliError(f"output {str(dest)!r} is the input; write to a new file")
    if not 0 < args.fraction < 1:
        raise CliError(f"--fraction must be in (0, 1), got {args.fraction:g}")
    from ran_keras import activations
    psi = activations.canonical(args.psi, "--psi")
    from ran_keras.spec import load_sidecar, sidecar_path
    spec = load_sidecar(src)
    if spec is None:
        raise CliError(f"no spec beside {src} (expected {sidecar_path(src)}); `ran train` and `ran weights import` "
                       f"write one")
    from ran_keras import fileio
    from ran_keras.builder import load_model
    from ran_keras.rewrite import restructure

    model = load_model(src)
    size = model.input_shape[1] or spec.input_size
    if args.action == "linearise":
        calib = _images(args, spec, size) if args.criterion == "linearity" else None
        new, new_spec, report = restructure.linearise(model, spec, args.fraction, args.criterion, psi=psi,
                                                      calibration=None if calib is None else [calib])
    else:
        new, new_spec, report = restructure.fold_codesign(model, spec, sample=_images(args, spec, size),
                                                          absorb_layer_scale=args.absorb_layer_scale)
    with fileio.atomic_path(dest) as tmp:
        new.save(tmp)
    new_spec.save(sidecar_path(dest))
    print(f"wrote {dest} and {sidecar_path(dest)}", file=sys.stderr)
    if args.json:
        emit_json(dict(report.to_dict(), input=str(src), output=str(dest)), args.json)
    else:
        print(report.format())
    return 0


def _images(args, spec, size: int):
    from ran_keras.export.calibration import DEFAULT_SOURCE, calibration_set
    images, _ = calibration_set(args.calibration or DEFAULT_SOURCE, args.samples, size, spec=spec)
    return images
