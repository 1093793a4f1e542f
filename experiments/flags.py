"""absl flags shared by ``experiments/train.py`` and ``experiments/search.py``.

One flag per ``ran_keras.recipes.TrainConfig`` field, all defaulting to "not given", so a value
comes from the flag if given, else from ``--recipe``, else from TrainConfig's default. Defined
once here (absl flags are process-global), imported by both entry points; a name another entry
point already defined in the same process (``--seed``, ``--classes``) is shared and counts only
when given on the command line.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app, flags

from ran_keras.train.config import FIELDS, RECIPES, TrainConfig, resolve_config

FLAGS = flags.FLAGS

GROUP_TITLES = {"model": "model", "data": "data and augmentation", "detection": "detection (--task=detection)",
                "optim": "optimisation", "run": "run"}


def _recipe_note(name: str) -> str:
    values = [f"{r}: {RECIPES[r][name]}" for r in RECIPES if name in RECIPES[r]]
    default = FIELDS[name].default
    text = f"default {default}" if default is not None else ""
    if values:
        text = "; ".join(values) + ("; otherwise " + text if text else "")
    return f" [{text}]" if text else ""


def _define() -> None:
    flags.DEFINE_string("recipe", None, f"named preset of the settings below: {', '.join(RECIPES)} or none "
                                        "(train: ran_e; search: ran_e, or digits with --demo)")
    flags.DEFINE_string("json", None, "also write the results as JSON to this file ('-' for stdout)")
    for name, f in FIELDS.items():
        if name in FLAGS:      # defined by another entry point in this process (e.g. --seed): shared
            continue
        help_text = f.metadata["help"] + _recipe_note(name)
        kind = str(f.type)
        choices = f.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(name, None, list(choices), help_text)
        elif "bool" in kind:
            flags.DEFINE_boolean(name, None, help_text)
        elif "int" in kind:
            flags.DEFINE_integer(name, None, help_text)
        elif "float" in kind:
            flags.DEFINE_float(name, None, help_text)
        else:
            flags.DEFINE_string(name, None, help_text)


if "batch_size" not in FLAGS:
    _define()
if "memory_check" not in FLAGS:
    flags.DEFINE_boolean("memory_check", True, "refuse to start when the run's estimated memory (weights, optimizer "
                                               "state, the batch's activations) exceeds what the machine has "
                                               "(--nomemory_check: try anyway)")


def config_from_flags(default_recipe: str = "ran_e", **forced: Any) -> TrainConfig:
    """The TrainConfig the command line asks for (``forced`` values apply where no flag was given)."""
    overrides: Dict[str, Any] = {}
    for name in FIELDS:
        flag = FLAGS[name]
        value = flag.value if (flag.present or flag.default is None) else None
        if value is None and name in forced:
            value = forced[name]
        overrides[name] = value
    recipe = FLAGS.recipe if FLAGS.recipe is not None else default_recipe
    cfg = resolve_config(recipe, overrides)
    check_outputs(cfg)
    return cfg


def check_outputs(cfg: TrainConfig) -> None:
    """--model_dir and --json FILE must be writable: checked before TensorFlow starts."""
    from ran_keras import fileio
    if cfg.model_dir:
        fileio.check_output_dir(cfg.model_dir, "--model_dir")
    if FLAGS.json not in (None, "-"):
        fileio.check_output_file(FLAGS.json, "--json")


def check_memory(cfg: TrainConfig, spec) -> None:
    """Refuse a CPU run whose estimated memory exceeds the machine's, naming the setting (before
    TensorFlow). On a GPU or TPU the activations live in device memory, unknown here: not checked.
    A multi-worker run counts this worker's share of the global batch."""
    from ran_keras.analysis import memory
    if not FLAGS.memory_check or cfg.strategy == "tpu" or memory.accelerator_present():
        return
    from ran_keras.spec import scale_width
    if cfg.width != 1.0:
        spec = scale_width(spec, cfg.width, rounding="round")
    size = cfg.image_size or spec.input_size
    workers = memory.cluster_workers() if cfg.strategy == "multi_worker_mirrored" else 1
    estimate = memory.training(spec, image_size=size, classes=cfg.classes or 10,
                               batch_size=-(-cfg.batch_size // workers), optimizer=cfg.optimizer, dtype=cfg.dtype,
                               ema=cfg.ema)
    memory.check(estimate, {"activations": "--batch_size", "input batch": "--batch_size",
                            "weights, gradients and optimizer state": "--width (or a smaller --model)"},
                 "--nomemory_check")


def help_text(program: str, summary: str, extra: Sequence[str] = ()) -> str:
    lines = [f"usage: {program} --model=MODEL --dataset=NAME --model_dir=DIR [--flag=value ...]", "", summary, "",
             "  --recipe: " + FLAGS["recipe"].help, "  --json: " + FLAGS["json"].help,
             "  --[no]memory_check: " + FLAGS["memory_check"].help]
    lines += list(extra)
    groups: Dict[str, List[str]] = {}
    for name, f in FIELDS.items():
        groups.setdefault(f.metadata["group"], []).append(f"  --{name}: {FLAGS[name].help}")
    for group, entries in groups.items():
        lines += ["", f"{GROUP_TITLES.get(group, group)}:"] + entries
    lines += ["", "Booleans: --flag / --noflag. --helpfull lists every absl flag."]
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    """Write ``data`` where --json says (a file, or '-' for stdout); nothing without --json."""
    if FLAGS.json:
        from ran_keras.cli.common import emit_json as emit
        emit(data, FLAGS.json)


def _is_non_finite_loss(err: Exception) -> bool:
    """Without importing the trainer (and TensorFlow) when it never ran: a bad flag stays fast."""
    trainer = sys.modules.get("ran_keras.train.trainer")
    return trainer is not None and isinstance(err, trainer.NonFiniteLossError)


def run_main(main: Callable[[List[str]], Optional[int]], argv: Sequence[str], program: str, summary: str,
             extra_help: Sequence[str] = ()) -> int:
    """Parse ``argv`` with absl and run ``main``; errors become one line and an exit status.

    Exit status: 0 done, 2 bad input (a RanError: unknown model, bad flag value, missing data...),
    3 stopped on a non-finite loss, 130 interrupted.
    """
    from ran_keras.errors import RanError
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(argv)
    if any(a in ("-h", "--help", "--helpshort", "-?") for a in argv[1:]):
        print(help_text(program, summary, extra_help))
        return 0
    try:
        rest = FLAGS(argv)
    except flags.Error as err:
        print(f"{program}: error: {err} (see {program} --help)", file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"{program}: error: unexpected arguments {rest[1:]}; flags are written --name=value", file=sys.stderr)
        return 2
    try:
        return int(main(rest) or 0)
    except RanError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return 3 if _is_non_finite_loss(err) else 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted (re-run with the same --model_dir to resume from the last checkpoint)",
              file=sys.stderr)
        return 130
    except app.UsageError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug: keep the traceback
        traceback.print_exc()
        return 1
    finally:
        FLAGS.unparse_flags()
