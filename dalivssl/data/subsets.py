"""Class-balanced nested subsets (the paper's dataset-size axis: 10k/30k/50k/100k Kinetics videos).

All subsets come from one seeded ordering of the whole manifest, so the subset of size n is the
first n videos of that ordering and every smaller subset is a strict subset of every larger one.
The ordering is built in rounds: each round visits every class that still has videos, in a fresh
seeded random class order, and takes that class's next video (classes are shuffled internally
with the same seed). Hence in any prefix the per-class counts differ by at most 1 - except for
classes that have run out of videos, which contribute all they have while the others fill the
gap (as balanced as possible among themselves). Unlabelled records (label -1) form one group.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from dalivssl.data.manifest import Manifest
from dalivssl.errors import DalivsslError


def balanced_order(manifest: Manifest, seed: int = 0) -> list[int]:
    """Indices of all records of ``manifest`` in the nested, class-balanced order."""
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(manifest.records):
        groups[r.label].append(i)
    labels = sorted(groups)
    queues = {c: list(rng.permutation(groups[c])) for c in labels}
    order: list[int] = []
    live = list(labels)
    while live:
        for j in rng.permutation(len(live)):
            order.append(int(queues[live[j]].pop()))
        live = [c for c in live if queues[c]]
    return order


def parse_sizes(sizes) -> list[int]:
    """'10000,30000' or an iterable of ints -> sorted unique positive ints."""
    if isinstance(sizes, str):
        try:
            sizes = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
        except ValueError:
            raise DalivsslError(f"subset sizes must be integers, got {sizes!r}") from None
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] <= 0:
        raise DalivsslError(f"subset sizes must be positive, got {sizes}")
    return sizes


def nested_subsets(manifest: Manifest, sizes, seed: int = 0) -> dict[int, Manifest]:
    """{size: Manifest}: nested (smaller ⊂ larger), class-balanced (±1 where classes allow),
    deterministic for ``seed``. Records keep their manifest order inside each subset."""
    sizes = parse_sizes(sizes)
    if sizes[-1] > len(manifest):
        raise DalivsslError(f"subset size {sizes[-1]} is larger than the manifest "
                            f"({len(manifest)} videos)")
    n_classes = len({r.label for r in manifest.records})
    if sizes[0] < n_classes:
        raise DalivsslError(f"subset size {sizes[0]} is smaller than the manifest's {n_classes} "
                            f"classes: a class-balanced subset needs every class at least once "
                            f"(else the subsets of a benchmark cover different classes)")
    order = balanced_order(manifest, seed)
    out = {}
    for n in sizes:
        keep = sorted(order[:n])
        out[n] = manifest.select((manifest.records[i] for i in keep), subset={"size": n,
                                                                             "seed": seed})
    return out
