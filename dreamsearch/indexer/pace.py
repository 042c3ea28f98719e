"""How many images the model takes at a time on a CPU: as many as fit in a few seconds.

A fixed 32 suits a GPU (32 images in well under a second) but not a CPU: the DreamSim
ensemble runs at 0.2-2 images/s on two cores, so 32 images are 16-160 s in which nothing is
committed, the progress bar stands still and Ctrl-C waits (issue 23: the first commit came
after 146 s, a Ctrl-C was answered 91 s later). The pace measures the model's seconds per
image on each call and sizes the next one to about ``STEP_SECONDS``. The first call is one
image, so the first commit comes as soon as one image is embedded; later calls take at
least two, because one image at a time wastes a fifth of two threads (ViT-B/16 on two
threads: 6.4 images/s at batch 1, 7.6 at 2, 7.8-8.3 at 4-8; on a busy machine batch 1 fell
to 41% of batch 2; docs/indexing.md).
"""

from __future__ import annotations

#: Seconds of model work per call (and per commit, unless ``--batch-size`` is given): short
#: enough that Ctrl-C is answered and the bar moves within a few seconds, long enough that
#: a commit (milliseconds) costs nothing next to it.
STEP_SECONDS = 5.0
#: The first call, before anything is measured: one image, for the earliest first commit.
FIRST_STEP = 1
#: The fewest images per later call: at 0.2 images/s, Ctrl-C then waits 10 s at most.
LEAST_STEP = 2
#: The batch where the pace does not apply (a GPU embeds 32 images in well under a second),
#: and the most a CPU call takes whatever its speed: the reading threads' read-ahead, and so
#: the memory of a run, is sized for this many.
DEFAULT_BATCH = 32


class Pace:
    """Images per model call, from the last call's seconds per image."""

    def __init__(self) -> None:
        self.seconds_per_image: float | None = None

    def step(self) -> int:
        if self.seconds_per_image is None:
            return FIRST_STEP
        if self.seconds_per_image <= 0:
            return DEFAULT_BATCH
        return max(LEAST_STEP, min(DEFAULT_BATCH, int(STEP_SECONDS / self.seconds_per_image)))

    def took(self, images: int, seconds: float) -> None:
        """The model embedded ``images`` in ``seconds`` (every model of the run together)."""
        if images:
            self.seconds_per_image = seconds / images
