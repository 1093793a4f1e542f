"""``ran list``, ``ran profile`` and ``ran spec``: the model zoo from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from ran_keras.cli.common import CliError, add_json_arg, emit_json, positive_int
from ran_keras.report import fmt_count, fmt_pct, table

PAPER_NOTE = ("paper: Bhardwaj et al. 2022 at 224x224, 1000 classes (source table per model: `ran list --json`). "
              "params include BN moving statistics; MACs count conv, depthwise and dense layers.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the registered models",
                       description="List the registered models with our and the paper's params/MACs.")
    p.add_argument("pattern", nargs="?", help="shell pattern on model names, e.g. 'ran_e_*'")
    p.add_argument("--family", help="only this family (ran_e, efficientnet_lite, resnet, repvgg, convnext, ran_i)")
    add_json_arg(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("profile", help="params, MACs and non-linear units of models",
                       description="Profile registered models, spec JSON files or saved Keras models. "
                                   "With no model, profile every registered model beside the paper's figures.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="registered name, spec .json, or .keras/.h5 file")
    p.add_argument("--input-size", type=positive_int, help="square input size (default: the spec's, 224)")
    p.add_argument("--classes", type=positive_int, default=1000, help="classifier size (default 1000)")
    p.add_argument("--activation", help="profile with this activation everywhere (e.g. relu6)")
    p.add_argument("--layers", action="store_true", help="also print (and put in JSON) the per-layer table")
    p.add_argument("--image-size", help="detectors (rcnn_*): padded input HxW (default 800x800)")
    p.add_argument("--rois", type=positive_int, help="detectors: RoIs per image through the head (default 1000)")
    add_json_arg(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("spec", help="print a registered model's spec as JSON (to edit or reuse)",
                       description="Print the spec JSON of a registered model or a spec file (validated).")
    p.add_argument("model", help="registered name or spec .json")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_spec)


def _record(prof, paper, layers: bool = False) -> Dict[str, Any]:
    rec = prof.to_dict(layers=layers)
    if paper is not None:
        rec["paper"] = dict(paper.to_dict(), params_match=paper.matches("params", prof.params),
                            macs_match=paper.matches("macs", prof.macs))
    return rec


def cmd_list(args) -> int:
    from ran_keras import registry
    from ran_keras.analysis.profiler import profile_spec
    names = registry.list_models(args.pattern, family=args.family)
    if not names:
        raise CliError(f"no registered model matches pattern={args.pattern!r} family={args.family!r}; "
                       f"run `ran list` to see all")
    records = []
    for name in names:
        entry = registry.get_entry(name)
        prof = profile_spec(entry.spec())
        rec = registry.describe(name)
        rec.update(params=prof.params, macs=prof.macs)
        records.append(rec)
    if args.json:
        emit_json({"models": records}, args.json)
        return 0
    rows = [[r["name"], r["family"], fmt_count(r["params"]), r["paper"]["params"] if r["paper"] else "-",
             fmt_count(r["macs"]), r["paper"]["macs"] if r["paper"] else "-", r["description"]] for r in records]
    print(table(["model", "family", "params", "paper", "MACs", "paper", "description"], rows))
    return 0


def _load(model: str, input_size: Optional[int], classes: int, activation: Optional[str]):
    """(profile, paper figures or None) for one command-line model argument."""
    from ran_keras import registry
    from ran_keras.export.pipeline import resolve_model_arg  # the shared MODEL resolver (no TensorFlow)
    from ran_keras.analysis.profiler import profile_model, profile_spec
    ref = resolve_model_arg(model, activation, command="ran profile")
    if ref.origin == "keras":
        if input_size:
            raise CliError("--input-size applies to specs, not to saved Keras models")
        from ran_keras.builder import load_model
        return profile_model(load_model(ref.path)), None
    paper = None
    if ref.origin == "registered" and (input_size in (None, 224)) and classes == 1000 and ref.activation is None:
        paper = registry.get_entry(model).paper
    return profile_spec(ref.spec, input_size=input_size, classes=classes), paper


def _match(prof, paper) -> str:
    if paper is None:
        return "-"
    return "yes" if paper.matches("params", prof.params) and paper.matches("macs", prof.macs) else "NO"


def cmd_profile(args) -> int:
    from ran_keras import registry
    from ran_keras.tasks.detection.zoo import is_detector
    if args.models and all(is_detector(m) for m in args.models):
        return _profile_detectors(args)
    if any(is_detector(m) for m in args.models):
        raise CliError("profile detectors (rcnn_*) and classification models in separate commands")
    models: List[str] = args.models or registry.list_models()
    results = [(m, *_load(m, args.input_size, args.classes, args.activation)) for m in models]
    if args.json:
        data = [_record(prof, paper, args.layers) for _, prof, paper in results]
        emit_json({"models": data} if len(data) != 1 or not args.models else data[0], args.json)
        return 0

    rows = []
    for _, prof, paper in results:
        pp = paper.params_value if paper else None
        pm = paper.macs_value if paper else None
        rows.append([prof.name, fmt_count(prof.params), paper.params if paper else "-",
                     fmt_pct(100 * (prof.params - pp) / pp) if pp else "-",
                     fmt_count(prof.trainable_params), fmt_count(prof.macs), paper.macs if paper else "-",
                     fmt_pct(100 * (prof.macs - pm) / pm) if pm and prof.macs is not None else "-", _match(prof, paper),
                     prof.nonlinear_units])
    first = results[0][1]
    shape = "x".join("?" if d is None else str(d) for d in first.input_shape)
    classes = first.classes if first.classes is not None else "no"
    print(f"input {shape}, {classes} classes" + (f", activation {args.activation}" if args.activation else ""))
    print(table(["model", "params", "paper", "diff", "trainable", "MACs", "paper", "diff", "match",
                 "non-linear units"], rows))
    if any(paper for _, _, paper in results):
        print(PAPER_NOTE)
        print("match: within 1.5% of the paper, or within the rounding of the figure it prints "
              "(1.4B stands for 1.35B-1.45B).")
    for _, prof, _ in results:
        kinds = prof.macs_by_kind
        if len(results) == 1:
            print("MACs by kind: " + ", ".join(f"{k} {fmt_count(v)}" for k, v in kinds.items()))
        if args.layers:
            print(f"\n{prof.name}: per layer")
            print(table(["layer", "op", "output", "params", "MACs", "non-linear"],
                        [[r.name, r.op, "x".join(str(d) for d in r.output_shape), r.params, r.macs,
                          r.nonlinear_units] for r in prof.layers]))
    return 0


def _profile_detectors(args) -> int:
    """Detectors: params beside Table 3, MACs split backbone / RPN / RoI head at a stated size and RoI count."""
    from ran_keras.cli.detect import HEADERS, _note, parse_size, profile_rows
    size = (parse_size(args.image_size) if args.image_size else
            (args.input_size, args.input_size) if args.input_size else (800, 800))
    records, rows = profile_rows(args.models, size, args.rois)
    if args.json:
        emit_json({"models": records} if len(records) != 1 else records[0], args.json)
        return 0
    print(table(HEADERS, rows))
    print(_note(size, records[0]["rois"]))
    return 0


def cmd_spec(args) -> int:
    from ran_keras import registry
    from ran_keras import fileio
    spec = registry.resolve_spec(args.model)
    if args.output:
        fileio.write_text(args.output, spec.to_json())
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(spec.to_json())
    return 0
