"""A block as data: the chain of ops of its residual branch, its shortcut, and what follows the add."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ran_keras.ir.ops import Op, Parallel


@dataclass(frozen=True)
class BlockGraph:
    """``post(main(x) + shortcut(x))``; ``shortcut`` None means no residual, () the identity.

    ``main`` may itself contain ``Parallel`` ops (branches joined by a merge). NN-Mass reads
    ``main`` as the block's residual branch; the builder and the profiler read ``ops``.
    """
    main: Tuple[Op, ...]
    shortcut: Optional[Tuple[Op, ...]] = None
    post: Tuple[Op, ...] = ()

    @property
    def residual(self) -> bool:
        return self.shortcut is not None

    @property
    def ops(self) -> Tuple[Op, ...]:
        """The whole block as one chain: the residual add is a ``Parallel`` named 'add'."""
        if self.shortcut is None:
            return tuple(self.main) + tuple(self.post)
        return (Parallel("add", (tuple(self.main), tuple(self.shortcut))),) + tuple(self.post)
