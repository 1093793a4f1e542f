"""TensorBoard event files cut back to a step, so a resumed run's logs read as an uninterrupted run's.

A run killed after its last checkpoint has logged steps it will train again once resumed; without
the cut TensorBoard would show those steps twice. Event files are TFRecord files of ``Event``
protos: each is rewritten (atomically) without the events after the step resumed from.
"""

from __future__ import annotations

from pathlib import Path

from ran_keras import fileio
from ran_keras.backend import tf


def truncate_events(folder, step: int) -> int:
    """Drop every event after ``step`` from the event files in ``folder``; returns how many were dropped.

    A record cut short at the end of a file (a run killed while writing it) is dropped too."""
    dropped = 0
    for path in sorted(Path(folder).glob("events.out.tfevents.*")) if Path(folder).is_dir() else ():
        kept, total = [], 0
        try:
            for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                total += 1
                if tf.compat.v1.Event.FromString(record).step <= step:
                    kept.append(record)
        except tf.errors.DataLossError:
            total += 1
        if len(kept) == total:
            continue
        dropped += total - len(kept)
        with fileio.atomic_path(path) as tmp:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for record in kept:
                    writer.write(record)
    return dropped
