"""``ran detect list|train|eval|predict``: the slim two-stage detector from the command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ran_keras.cli.common import CliError, add_json_arg, emit_json, positive_int

DESCRIPTION = """\
The slim two-stage detector (paper Sec. 3.5, Table 3) on any zoo backbone.
  list     registered detectors, their params / MACs beside Table 3
  train    absl flags (ran detect train --help): --model, --dataset, --model_dir, --backbone_weights ...
  eval     COCO AP of a trained detector (MODEL_DIR/detector) or a fresh one on a dataset
  predict  boxes JSON and annotated PNGs for image files
  export   backbone + RPN as int8 TFLite (for `ran vela`), the whole detector as fp32 TFLite if it converts"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="the two-stage detector: list, train, eval, predict", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    q = dsub.add_parser("list", help="registered detectors with params / MACs beside Table 3")
    _size_args(q)
    add_json_arg(q)
    q.set_defaults(func=cmd_list)

    q = dsub.add_parser("train", help="train a detector (absl flags: ran detect train --help)", add_help=False,
                        prefix_chars="\0")
    q.add_argument("argv", nargs=argparse.REMAINDER)
    q.set_defaults(func=lambda args: importlib.import_module("ran_keras.experiments.detect").run(
        ["ran detect train"] + list(args.argv)))

    q = dsub.add_parser("eval", help="COCO AP of a detector on a dataset")
    q.add_argument("--detector", required=True, help="a saved detector folder (MODEL_DIR/detector), or a registered "
                                                     "name / config .json (random weights: a baseline)")
    q.add_argument("--dataset", required=True, help="coco/2017 (TFDS), deepforest (held-out image), "
                                                    "voc:ANNOTATIONS[:IMAGES] or coco_json:FILE:IMAGES")
    q.add_argument("--data_dir", "--data-dir", dest="data_dir", help="TFDS data_dir")
    q.add_argument("--split", help="TFDS split (default validation)")
    q.add_argument("--batch-size", type=positive_int, default=2, help="images per batch (default 2)")
    q.add_argument("--limit", type=positive_int, help="evaluate only the first N batches")
    q.add_argument("--seed", type=int, default=0, help="initialisation seed of a fresh detector (default 0)")
    add_json_arg(q)
    q.set_defaults(func=cmd_eval)

    q = dsub.add_parser("predict", help="detections of image files: boxes JSON + annotated PNGs")
    q.add_argument("detector", help="a saved detector folder (MODEL_DIR/detector)")
    q.add_argument("images", nargs="+", help="image files (png, jpg, bmp, gif); deepforest:STEM names a deepforest "
                                            "sample (e.g. deepforest:OSBS_029), drawn with its ground truth in green")
    q.add_argument("-o", "--output", required=True, help="output folder: detections.json and <image>.png")
    q.add_argument("--min-score", type=float, default=0.5, help="keep detections scoring at least this (default 0.5)")
    q.add_argument("--classes", help="comma-separated class names for labels 1..K in the JSON")
    q.set_defaults(func=cmd_predict)


    q = dsub.add_parser("bench", help="CPU FPS of two detectors (fp32 TFLite, interleaved runs, random weights)")
    q.add_argument("detector", help="registered detector or config .json (A)")
    q.add_argument("--vs", required=True, help="the detector to compare with (B)")
    q.add_argument("--image-size", type=positive_int, default=800, help="square input, multiple of 32 (default 800)")
    q.add_argument("--threads", type=positive_int, default=1, help="interpreter threads (default 1)")
    q.add_argument("--runs", type=positive_int, default=5, help="timed runs of each (default 5)")
    q.add_argument("--warmup", type=int, default=1, help="warm-up runs of each (default 1)")
    q.add_argument("-o", "--output", default="out/detect_bench", help="where the .tflite files go")
    q.add_argument("--reuse", action="store_true", help="time <output>/<detector>_<size>_fp32.tflite files an "
                                                        "earlier run wrote instead of converting again")
    add_json_arg(q)
    q.set_defaults(func=cmd_bench)

    q = dsub.add_parser("export", help="backbone + RPN as int8 TFLite (ran vela), whole detector as fp32 TFLite")
    q.add_argument("detector", help="a saved detector folder (MODEL_DIR/detector), or a registered name / config "
                                    ".json (random weights)")
    q.add_argument("-o", "--output", required=True, help="output folder")
    q.add_argument("--image-size", type=positive_int, default=None,
                   help="square input of the exported graphs (default: the detector's min_size rounded up to 32)")
    q.add_argument("--no-whole", action="store_true", help="skip the fp32 whole-detector attempt")
    add_json_arg(q)
    q.set_defaults(func=cmd_export)


def _size_args(q) -> None:
    q.add_argument("--image-size", default="800x800", help="padded input HxW for MACs (default 800x800)")
    q.add_argument("--rois", type=positive_int, help="RoIs per image through the head (default: the test-time "
                                                     "proposal count, 1000)")


def parse_size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 32 or w < 32:
            raise ValueError
    except ValueError:
        raise CliError(f"--image-size: expected HxW with both sides >= 32, e.g. 800x800, got {text!r}") from None
    return h, w


def profile_rows(names, image_size, rois):
    """(records, table rows) of registered detectors profiled at ``image_size`` with ``rois``."""
    from ran_keras.report import fmt_count, fmt_pct
    from ran_keras.tasks.detection.profiling import profile_detector
    from ran_keras.tasks.detection.zoo import get_entry
    records, rows = [], []
    for name in names:
        entry = get_entry(name)
        prof = profile_detector(entry.config, image_size, rois)
        paper = entry.paper
        rec = dict(prof.to_dict(), description=entry.description, paper=None if paper is None else {
            "params": paper.params, "macs": paper.macs, "mAP": paper.map, "fps_gain": paper.fps_gain})
        records.append(rec)
        diff = fmt_pct(100 * (prof.params - paper.params_value) / paper.params_value) if paper else "-"
        rows.append([name, entry.config.backbone, f"{prof.params / 1e6:.2f}M", paper.params if paper else "-", diff,
                     *(fmt_count(p.macs) for p in prof.parts.values()), fmt_count(prof.macs),
                     paper.macs if paper else "-"])
    return records, rows


HEADERS = ["detector", "backbone", "params", "paper", "diff", "MACs backbone", "RPN", "RoI head", "MACs", "paper"]


def _note(image_size, rois) -> str:
    from ran_keras.tasks.detection.zoo import TABLE3_NOTE
    return (f"MACs for one image padded to {image_size[0]}x{image_size[1]} with {rois} RoIs through the head "
            f"(both change them; see WORKSPACE.md for which settings come near the paper's).\n{TABLE3_NOTE}")


def cmd_list(args) -> int:
    from ran_keras.report import table
    from ran_keras.tasks.detection.zoo import list_detectors
    size = parse_size(args.image_size)
    records, rows = profile_rows(list_detectors(), size, args.rois)
    if args.json:
        emit_json({"detectors": records}, args.json)
        return 0
    print(table(HEADERS, rows))
    print(_note(size, records[0]["rois"]))
    return 0


def _detector(ref: str, seed: int):
    """(detector, saved?) for a saved folder or a registered name / config .json."""
    from ran_keras.tasks.detection.model import CONFIG_FILE, build_detector, load_detector
    from ran_keras.tasks.detection.zoo import resolve_detector
    path = Path(ref)
    if path.is_dir():
        return load_detector(path), True
    if (path.parent / CONFIG_FILE).is_file() and path.name == CONFIG_FILE:
        return load_detector(path.parent), True
    return build_detector(resolve_detector(ref), seed=seed), False


def cmd_eval(args) -> int:
    from ran_keras.tasks.detection.inference import evaluate
    from ran_keras.tasks.detection.task import open_source
    detector, saved = _detector(args.detector, args.seed)
    if not saved:
        print(f"note: {args.detector} is not a saved detector; evaluating fresh weights (seed {args.seed}) as a "
              f"baseline", file=sys.stderr)
    work = Path(".ran_detect_data")
    source = open_source(args.dataset, args.split, args.data_dir, work, False)
    metrics = evaluate(detector, source, args.batch_size, args.limit)
    record = {"detector": args.detector, "trained": saved, "dataset": source.name, "metrics": metrics}
    if args.json:
        emit_json(record, args.json)
        return 0
    print(f"{detector.config.name} on {source.name}: " + ", ".join(
        f"{k} {100 * v:.2f}%" if v >= 0 else f"{k} -" for k, v in metrics.items()))
    return 0


def _image_paths(images):
    """(paths, ground-truth boxes or None per image) with deepforest:STEM resolved to the sample."""
    paths, truths = [], []
    for image in images:
        if not image.startswith("deepforest:"):
            paths.append(image)
            truths.append(None)
            continue
        import numpy as np
        from ran_keras.tasks.detection.datasets import voc_source
        from ran_keras.tasks.detection.deepforest_data import sample_pairs
        ((png, xml),) = sample_pairs([image.split(":", 1)[1]])
        paths.append(str(png))
        truths.append(np.concatenate([r["boxes"].numpy() for r in voc_source([xml]).dataset()]))
    return paths, truths


def cmd_predict(args) -> int:
    from ran_keras import fileio
    from ran_keras.tasks.detection.inference import TRUTH_COLOUR, draw, load_image, predict_files, write_png
    import json
    detector, saved = _detector(args.detector, 0)
    if not saved:
        raise CliError(f"predict needs a trained detector folder (MODEL_DIR/detector), got {args.detector!r}")
    names = [n.strip() for n in args.classes.split(",")] if args.classes else None
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    paths, truths = _image_paths(args.images)
    records = predict_files(detector, paths, names, args.min_score)
    for rec, truth in zip(records, truths):
        image = load_image(rec["image"])
        if truth is not None:
            image = draw(image, truth, TRUTH_COLOUR)
            rec["ground_truth"] = int(len(truth))
        image = draw(image, [d["box_xyxy"] for d in rec["detections"]])
        rec["annotated"] = str(write_png(out / f"{Path(rec['image']).stem}.png", image))
        print(f"{rec['image']}: {len(rec['detections'])} detections (score >= {args.min_score:g}) -> "
              f"{rec['annotated']}")
    fileio.write_text(out / "detections.json", json.dumps({"detector": args.detector, "images": records},
                                                           indent=1) + "\n")
    print(f"wrote {out / 'detections.json'}")
    return 0


def cmd_export(args) -> int:
    from ran_keras.tasks.detection.tflite_export import export_backbone_rpn, export_whole
    detector, saved = _detector(args.detector, 0)
    size = args.image_size or -(-detector.config.min_size // 32) * 32
    if size % 32:
        raise CliError(f"--image-size: must be a multiple of 32 (the backbone's stride), got {size}")
    out = Path(args.output)
    report = {"detector": args.detector, "trained": saved, "image_size": size,
              "backbone_rpn_int8": export_backbone_rpn(detector, out, size)}
    print(f"backbone + RPN int8: {report['backbone_rpn_int8']['path']} (compile it: ran vela "
          f"{report['backbone_rpn_int8']['path']}); CPU stage: {report['backbone_rpn_int8']['cpu_stage']}")
    if not args.no_whole:
        whole = report["whole_fp32"] = export_whole(detector, out, size)
        print(f"whole detector fp32: {whole.get('path') if whole['converted'] else 'not converted: ' + whole['error']}")
    if args.json:
        emit_json(report, args.json)
    return 0


def cmd_bench(args) -> int:
    """fp32 TFLite of each whole detector (one image, builtin ops), then interleaved A/B timing."""
    from ran_keras.export.bench import ab_bench, machine
    from ran_keras.tasks.detection.tflite_export import export_whole
    if args.image_size % 32:
        raise CliError(f"--image-size: must be a multiple of 32, got {args.image_size}")
    paths = []
    for ref in (args.detector, args.vs):
        detector, _ = _detector(ref, 0)
        existing = Path(args.output) / f"{detector.config.name}_{args.image_size}_fp32.tflite"
        if args.reuse and existing.is_file():
            paths.append(str(existing))
            print(f"{ref}: reusing {existing}", file=sys.stderr)
            continue
        whole = export_whole(detector, Path(args.output), args.image_size)
        if not whole["converted"]:
            raise CliError(f"{ref}: the fp32 TFLite conversion failed: {whole['error']}")
        paths.append(whole["path"])
        print(f"{ref}: {whole['path']} ({whole['size_bytes'] / 1e6:.1f} MB)", file=sys.stderr)
    result = ab_bench(paths[0], paths[1], threads=args.threads, runs=args.runs, warmup=args.warmup)
    a, b = result.a, result.b
    record = {"a": args.detector, "b": args.vs, "image_size": args.image_size, "threads": args.threads,
              "runs": args.runs, "fps_a": a.fps, "fps_b": b.fps, "median_ms_a": a.median_ms, "median_ms_b": b.median_ms,
              "latencies_ms_a": a.latencies_ms, "latencies_ms_b": b.latencies_ms, "ratio": a.fps / b.fps,
              "machine": machine()}
    if args.json:
        emit_json(record, args.json)
    print(f"{args.detector} vs {args.vs}, fp32 TFLite {args.image_size}x{args.image_size}, {args.threads} thread(s), "
          f"{args.runs} interleaved runs: {a.fps:.3f} / {b.fps:.3f} FPS = {a.fps / b.fps:.2f}x "
          f"({a.median_ms:.0f} ms vs {b.median_ms:.0f} ms)")
    return 0
