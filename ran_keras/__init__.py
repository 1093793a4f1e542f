"""ran-keras: Restructurable Activation Networks (Bhardwaj et al. 2022) for tf_keras and Ethos-U.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow can be imported, so the
process uses tf_keras (Keras 2) like tfmot does. Specs, the registry and the analytic profiler
do not import TensorFlow; ``create_model`` and Keras-model profiling do.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"

from ran_keras.errors import RanError, SpecError, UnknownModelError, InputShapeError  # noqa: E402
from ran_keras.spec import BlockSpec, NetworkSpec  # noqa: E402
from ran_keras.registry import create_model, get_spec, list_models, resolve_spec  # noqa: E402
from ran_keras.analysis.profiler import profile  # noqa: E402
from ran_keras import serializables  # noqa: E402

serializables.install()  # custom layers register with Keras once tf_keras is imported

__all__ = ["BlockSpec", "NetworkSpec", "create_model", "get_spec", "list_models", "resolve_spec",
           "profile", "RanError", "SpecError", "UnknownModelError", "InputShapeError", "__version__"]
