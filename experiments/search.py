"""The RAN-e PReLU search with absl flags (also ``ran search``), paper Sec. 2.4-2.5.

Trains a SuperNet of AFRBs with loss = CE + lambda * sum(alpha_i - 1)^2, logs every alpha, and
writes the derived subnetwork (alpha in --band -> collapsed conv, else IBN) as a spec JSON:

    python -m ran_keras.experiments.search --model=ran_e_supernet --dataset=imagenet2012 \\
        --data_dir=/data/tfds --model_dir=runs/search --lambda=0.01 --epochs=100

    ran search --demo --model_dir=runs/digits_search     # offline: digits, lambdas 0,1e-3,1e-2,1e-1

With --lambdas=a,b,... one search runs per value in --model_dir/lambda_<value>, and a summary
table is printed and written to sweep.md / sweep.json.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from absl import flags

from ran_keras.experiments import flags as flags_lib

FLAGS = flags.FLAGS
DEMO_LAMBDAS = ("0", "1e-3", "1e-2", "1e-1")

if "lambdas" not in FLAGS:
    flags.DEFINE_float("lambda", 0.01, "weight of sum(alpha_i - 1)^2 in the loss")
    flags.DEFINE_list("lambdas", None, "a sweep: one search per value (overrides --lambda); "
                                       f"--demo default: {','.join(DEMO_LAMBDAS)}")
    flags.DEFINE_list("band", ["0.8", "1.3"], "collapse an AFRB whose final alpha is in [low, high]")
    flags.DEFINE_string("derived_activation", "hard_swish", "activation of the derived subnetwork")
    flags.DEFINE_string("derived_name", None, "name of the derived spec (default <supernet>_lam<lambda>); "
                                              "one search only (refused with --lambdas or --demo's sweep)")
    flags.DEFINE_integer("alpha_log_every", 1, "log the alphas every N steps", lower_bound=1)
    flags.DEFINE_integer("retrain_epochs", 0, "then train each derived subnetwork from scratch for N epochs "
                                              "(same recipe) and report its held-out accuracy", lower_bound=0)
    flags.DEFINE_boolean("fold", None, "also fold the trained SuperNet with the rewriter (alphas in --band set to 1, "
                                       "no retraining) and report its held-out accuracy (--demo: on)")
    flags.DEFINE_boolean("demo", False, "the offline demo: the narrow digits SuperNet at 32x32 (width 0.25 of "
                                        "ran_e_supernet), --recipe=digits, the lambda sweep "
                                        f"{','.join(DEMO_LAMBDAS)}; any flag still overrides")

SUMMARY = ("PReLU search over a SuperNet's AFRB alphas (paper Sec. 2.4): loss = CE + lambda * sum(alpha - 1)^2; "
           "alphas logged to alphas.csv / TensorBoard / alphas.png; the derived subnetwork spec "
           "(derived_spec.json) collapses AFRBs whose alpha ends in --band and keeps the rest as IBNs.")
EXTRA_HELP = ["", "search:"] + [f"  --{n}: {FLAGS[n].help}" for n in
                                ("lambda", "lambdas", "band", "derived_activation", "derived_name",
                                 "alpha_log_every", "retrain_epochs", "fold", "demo")]


def _floats(values: Sequence[str], flag: str) -> List[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            from ran_keras.search.prelu import SearchError
            raise SearchError(f"--{flag}: {v!r} is not a number") from None
    return out


def main(argv: List[str]) -> int:
    from ran_keras.search import prelu
    from ran_keras.train.config import model_spec
    demo = FLAGS.demo
    forced = {}
    spec = None
    if demo and FLAGS.model is None:
        spec = prelu.demo_supernet_spec()
    if demo and FLAGS.model_dir is None:
        forced["model_dir"] = "runs/digits_search"
    cfg = flags_lib.config_from_flags("digits" if demo else "ran_e", **forced)
    if spec is None:
        spec = model_spec(cfg)          # a bad --model fails before TensorFlow starts
        prelu.require_afrbs(spec)
    band = prelu.check_band(_floats(FLAGS.band, "band"))
    flags_lib.check_memory(cfg, spec)
    lambdas = FLAGS.lambdas if FLAGS.lambdas is not None else (
        list(DEMO_LAMBDAS) if demo and not FLAGS["lambda"].present else None)
    fold = FLAGS.fold if FLAGS.fold is not None else demo
    # run_sweep / run_search check every value (each lambda, --derived_name, --derived_activation)
    # before the first step is trained
    common = dict(band=band, derived_name=FLAGS.derived_name, derived_activation=FLAGS.derived_activation,
                  alpha_log_every=FLAGS.alpha_log_every, retrain_epochs=FLAGS.retrain_epochs, fold=fold)
    if lambdas:
        results = prelu.run_sweep(cfg, spec, lambdas=_floats(lambdas, "lambdas"), **common)
        if results[0].chief:   # the other workers of a cluster write nothing
            flags_lib.emit_json([r.to_dict() for r in results])
    else:
        result = prelu.run_search(cfg, spec, lam=FLAGS["lambda"].value, **common)
        if result.chief:
            flags_lib.emit_json(result.to_dict())
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    return flags_lib.run_main(main, argv, "ran search", SUMMARY, EXTRA_HELP)


if __name__ == "__main__":
    sys.exit(run())
