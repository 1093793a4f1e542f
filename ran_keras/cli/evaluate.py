"""``ran eval``: top-1/top-5 of a model (registered, spec, .keras or int8 .tflite) on ImageNet or an image folder."""

from __future__ import annotations

import argparse
import sys

from ran_keras.cli.common import CliError, add_json_arg, emit_json, floats, positive_floats, positive_int

DESCRIPTION = """\
Evaluate a classifier with its reference's preprocessing (resize, centre crop, normalisation) and
report top-1 and top-5. MODEL is a registered name or spec .json (random weights unless --weights
imports a .pth / TF checkpoint), a saved .keras/.h5 model or a .tflite file (run by the LiteRT
interpreter as deployed: int8 in, int8 out). Saved models and .tflite files take their input
normalisation and preprocessing from the spec beside them (x.spec.json, written by `ran weights
import` and `ran export`), or from --spec / --input-mean / --input-std / --preprocessing.

Data: --dataset NAME (a prepared TFDS dataset such as imagenet2012 in --data_dir; nothing is
downloaded) or --image_folder DIR (DIR/<class>/*, classes numbered in sorted order: ImageNet's
synset folders give ImageNet's class numbers)."""


def register(sub: argparse._SubParsersAction) -> None:
    from ran_keras.data.eval_preprocessing import RECIPES
    p = sub.add_parser("eval", help="top-1/top-5 on ImageNet (TFDS) or an image folder, float or int8 .tflite",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered name, spec .json, .keras/.h5 or .tflite")
    p.add_argument("--weights", help="a .pth or TF checkpoint to import into a registered model or spec first")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", help="a prepared TFDS dataset, e.g. imagenet2012")
    data.add_argument("--image_folder", "--image-folder", dest="image_folder", help="DIR/<class>/* images")
    p.add_argument("--data_dir", "--data-dir", dest="data_dir", help="TFDS data_dir")
    p.add_argument("--split", help="TFDS split (default validation, else test)")
    p.add_argument("--spec", help="registered name or spec .json giving normalisation and preprocessing of a "
                                  "saved model without its x.spec.json")
    p.add_argument("--preprocessing", choices=sorted(RECIPES),
                   help="override the family's reference recipe: " + "; ".join(
                       f"{n}: {r.doc}" for n, r in RECIPES.items()))
    p.add_argument("--input-mean", type=floats, help="override the input mean (0-255 scale)")
    p.add_argument("--input-std", type=positive_floats, help="override the input std (0-255 scale)")
    p.add_argument("--input-size", type=positive_int, help="input size of a model built from a spec (default the spec's)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    add_json_arg(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from ran_keras import evaluation
    if args.data_dir and not args.dataset:
        raise CliError("--data_dir goes with --dataset")
    data = (evaluation.tfds_data(args.dataset, args.data_dir, args.split) if args.dataset
            else evaluation.folder_data(args.image_folder))
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    say(f"evaluating {args.model} on {data.description} ...")
    report = evaluation.evaluate(args.model, data, weights=args.weights, spec=args.spec,
                                 preprocessing=args.preprocessing, mean=args.input_mean, std=args.input_std,
                                 input_size=args.input_size, limit=args.limit, batch_size=args.batch_size,
                                 progress=say)
    if args.json:
        emit_json(report, args.json)
        return 0
    top5 = f", top-5 {100 * report['top5']:.2f}%" if report["top5"] is not None else ""
    print(f"{report['model']} ({report['kind']}, {report['preprocessing']}, {report['input_size']}x"
          f"{report['input_size']}): top-1 {100 * report['top1']:.2f}%{top5} on {report['images']} images "
          f"of {report['data']} ({report['seconds']:.1f} s)")
    return 0
