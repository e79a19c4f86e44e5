"""A fixed list of batches as a resumable loader, for tests that train without DALI."""
from __future__ import annotations


class BatchList:
    """A fixed list of batches with the ``PretextLoader`` state interface (``len``, ``epoch``,
    ``state_dict`` / ``load_state_dict``): what ``engine.fit.fit`` and ``runs.finetune``'s
    ``train_batches`` take in place of the DALI loader."""

    def __init__(self, batches):
        self.batches, self.epoch, self.position = list(batches), 0, 0
        self.manifest = None
        self.skipped: dict = {}

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in range(self.position, len(self.batches)):
            self.position = b + 1
            yield self.batches[b]
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
