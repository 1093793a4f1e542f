"""``ran weights list`` (Arm's published RAN weights) and ``ran weights import`` (a .pth or TF
checkpoint -> a saved Keras model with its spec beside it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ran_keras.cli.common import CliError, add_json_arg, emit_json, positive_int

IMPORT_DESCRIPTION = """\
Import a weights file into a registered model (or a spec .json) and save the result as a Keras
model, with the spec it was built from beside it (OUT.spec.json: padding, BatchNorm epsilon and
input mean/std as the source uses them; `ran export` and `ran eval` read it).

Accepted: Arm's published RAN files (RAN-e-C/GT TF checkpoints: pass the .index file or the
folder; RAN_i_{Tiny,Small,Base}_*.pth; the RAN-i-S detector's backbone with --backbone-only),
facebookresearch or timm ConvNeXt .pth, torchvision ResNet-18 .pth, timm EfficientNet-Lite0 .pth
(--layout timm-efficientnet-lite or timm-tf-efficientnet-lite). Every source key must map onto
exactly one model weight with the right shape, or nothing is written and every misfit is listed.
A file for a model that has published weights must be the published file (size and SHA-256)
unless --allow-unpublished. `ran weights list` shows the published files."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="Arm's published RAN weights: list them, import .pth / TF checkpoints")
    wsub = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND", required=True)
    lp = wsub.add_parser("list", help="the published RAN weight files, their accuracy and how to import each")
    add_json_arg(lp)
    lp.set_defaults(func=cmd_list)
    ip = wsub.add_parser("import", help="import a .pth or TF checkpoint into a model and save it as .keras",
                         description=IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    ip.add_argument("file", help="the weights: a .pth file, or a TF checkpoint (prefix, .index file or folder)")
    ip.add_argument("--model", required=True, help="registered model name or spec .json the weights belong to")
    ip.add_argument("-o", "--output", required=True, help="the Keras model to write (.keras or .h5)")
    ip.add_argument("--layout", default="auto", help="source layout (default: recognised from the keys)")
    ip.add_argument("--model-weights", choices=("ema", "model"), default="ema",
                    help="which weights of a training checkpoint: model_ema when present (ema, default, what the "
                         "reference evaluates) or the raw model")
    ip.add_argument("--allow-unpublished", action="store_true",
                    help="import a file that is not the published one for this model (changed, truncated, retrained)")
    ip.add_argument("--backbone-only", action="store_true",
                    help="import without the classifier (include_top=False); the RAN-i detector file needs it")
    ip.add_argument("--input-size", type=positive_int, default=None, help="input size (default: the spec's)")
    ip.add_argument("--classes", type=positive_int, default=None,
                    help="classifier width (default: the source's)")
    add_json_arg(ip)
    ip.set_defaults(func=cmd_import)


def cmd_list(args) -> int:
    from ran_keras.report import table
    from ran_keras.weights.published import PUBLISHED, REPOSITORY
    rows, data = [], []
    for entry in PUBLISHED:
        command = import_command(entry)
        top1 = f"{entry.top1:.2f}%" if entry.top1 is not None else "-"
        main = max(entry.files, key=lambda f: f.bytes)
        rows.append([entry.name, entry.model, top1, f"{sum(f.bytes for f in entry.files) / 1e6:.1f} MB",
                     main.name, command])
        data.append({"name": entry.name, "model": entry.model, "top1": entry.top1, "layout": entry.layout,
                     "note": entry.note, "import": command,
                     "files": [{"path": f.path, "bytes": f.bytes, "sha256": f.sha256, "url": f.media_url}
                               for f in entry.files]})
    if args.json:
        emit_json({"repository": REPOSITORY, "weights": data}, args.json)
        return 0
    print(f"Published by Arm in {REPOSITORY} (pretrained/, git-lfs; `git lfs pull` in a clone, or the "
          "file URLs in --json). Top-1: ImageNet, as reported there.\n")
    print(table(["weights", "model", "top-1", "size", "file", "import with"], rows))
    for entry in PUBLISHED:
        if entry.note:
            print(f"\n{entry.name}: {entry.note}")
    return 0


def import_command(entry) -> str:
    """The ``ran weights import`` line for a published set (files in the current folder)."""
    main = max(entry.files, key=lambda f: f.bytes)
    if entry.layout == "keras-tf-checkpoint":
        name = main.name.replace(".data-00000-of-00001", ".index")
        return f"ran weights import {entry.name}/{name} --model {entry.model} -o {entry.model}.keras"
    if entry.top1 is None:
        return f"ran weights import {main.name} --model {entry.model} --backbone-only -o {entry.model}_detector_backbone.keras"
    return f"ran weights import {main.name} --model {entry.model} -o {entry.model}.keras"


def cmd_import(args) -> int:
    out = Path(args.output)
    if out.suffix not in (".keras", ".h5"):
        raise CliError(f"-o must name a .keras or .h5 file, got {str(out)!r}")
    from ran_keras import fileio, registry
    from ran_keras.weights import importer
    spec = registry.resolve_spec(args.model)
    print(f"reading {args.file} ...", file=sys.stderr)
    src = importer.read_source(args.file, model=spec.name, layout=args.layout,
                               prefer_ema=args.model_weights == "ema", allow_unpublished=args.allow_unpublished)
    spec = importer.adapt_spec(spec, src)
    classes = args.classes or src.classes or 1000
    size = args.input_size or spec.input_size
    spec = spec.replace(input_size=size)
    from ran_keras.builder import build_model
    model = build_model(spec, (size, size, spec.input_channels), classes=classes,
                        include_top=not args.backbone_only, weights=src)
    with fileio.atomic_path(out) as tmp:
        model.save(tmp)
    from ran_keras.spec import sidecar_path
    spec.save(sidecar_path(out))
    summary = dict(importer.describe_source(src), model=spec.name, output=str(out),
                   spec=str(sidecar_path(out)), input_size=size, classes=classes if not args.backbone_only else None,
                   weights=len(model.weights))
    print(f"{src.layout.name} ({src.entry}): {len(src.arrays)} keys -> all {len(model.weights)} weights of "
          f"{spec.name}; {src.published or 'not a published file'}", file=sys.stderr)
    for note in src.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out} and {sidecar_path(out)}", file=sys.stderr)
    if args.json:
        emit_json(summary, args.json)
    return 0
