"""`dalivssl data …`: index, subset, synth, check and prepare video datasets.

Thin wrappers over dalivssl.data.*; every import of PyAV, numpy or DALI happens inside a callback.
"""
from __future__ import annotations

from pathlib import Path

import click

FORMATS = ("folders", "ucf101", "hmdb51", "kinetics400", "ssv2", "diving48")
MAX_LISTED = 50


def _report(failures, what: str, out: Path | None = None) -> None:
    """One line per failure on stderr (the first MAX_LISTED; all of them in a side file)."""
    if not failures:
        return
    for path, reason in failures[:MAX_LISTED]:
        click.echo(f"{what}: {path}: {reason}", err=True)
    if len(failures) > MAX_LISTED:
        click.echo(f"{what}: ... and {len(failures) - MAX_LISTED} more", err=True)
    if out is not None:
        side = out.with_name(out.name + ".failures.txt")
        side.write_text("".join(f"{p}\t{r}\n" for p, r in failures))
        click.echo(f"{what}: {len(failures)} problem(s) listed in {side}", err=True)


@click.group()
def data():
    """Index, subset, synthesise, check and prepare video datasets (JSONL manifests)."""


@data.command()
@click.argument("root", type=click.Path(path_type=Path), required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Annotation convention of the dataset (required unless --update).")
@click.option("--split", type=int, default=1, show_default=True,
              help="Official split number (ucf101, hmdb51).")
@click.option("--annotations", multiple=True, type=click.Path(path_type=Path),
              help="Annotation file or folder (repeatable); default: searched near ROOT.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest to write (JSONL); with --update default: the manifest itself.")
@click.option("--update", "update", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Add (or renew) the packet index of an existing manifest.")
@click.option("--workers", type=int, default=None, help="Probe processes (default: all cores).")
@click.option("--exact/--packets", default=False, show_default=True,
              help="Count frames by decoding (slow) instead of counting packets.")
def index(root, fmt, split, annotations, output, update, workers, exact):
    """Probe every video of ROOT once and write a manifest (path, frames, label, class, split)
    and its packet index (keyframes, packet offsets: MANIFEST.packets.npz), which lets the
    loader decode only the GOPs a clip needs. ``--update MANIFEST`` adds the packet index to an
    existing manifest (older manifests work without one, decoding from frame 0)."""
    from dalivssl.data.manifest import save_manifest
    from dalivssl.record import check_writable

    if update is not None:
        from dalivssl.data.index import update_packets
        from dalivssl.data.manifest import load_manifest

        if root is not None or fmt is not None:
            raise click.UsageError("--update MANIFEST takes no ROOT or --format")
        out = output or update
        check_writable(Path(out).parent)  # before probing every video
        manifest, problems = update_packets(load_manifest(update), workers=workers, progress=True)
        save_manifest(manifest, out)
        _report(problems, "index --update")
        n = sum(r.packets >= 0 for r in manifest)
        click.echo(f"{out}: packet index for {n} of {len(manifest)} videos "
                   f"({len(problems)} problem(s))")
        return
    if root is None or fmt is None or output is None:
        raise click.UsageError("give ROOT, --format and -o/--output (or --update MANIFEST)")
    from dalivssl.data.adapters import IndexOptions
    from dalivssl.data.index import index_dataset

    check_writable(Path(output).parent)  # before probing every video
    manifest, failures = index_dataset(root, fmt, IndexOptions(split, tuple(annotations)),
                                       exact=exact, workers=workers, progress=True)
    save_manifest(manifest, output)
    _report(failures, "index", output)
    splits = {}
    for r in manifest:
        splits[r.split] = splits.get(r.split, 0) + 1
    click.echo(f"{output}: {len(manifest)} videos, {len(manifest.classes)} classes, "
               f"{', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}; "
               f"{len(failures)} left out")


@data.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sizes", required=True, help="Comma-separated subset sizes, e.g. 10000,30000.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", "split_name", default=None, help="Use only records of this split.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for subset_<size>.jsonl.")
def subset(manifest, sizes, seed, split_name, output):
    """Class-balanced nested subsets (each smaller one inside every larger one)."""
    from dalivssl.data.manifest import load_manifest, save_manifest
    from dalivssl.data.subsets import nested_subsets

    m = load_manifest(manifest)
    if split_name:
        splits = sorted({r.split for r in m})
        if split_name not in splits:
            from dalivssl.errors import DalivsslError

            raise DalivsslError(f"{manifest}: no video in split {split_name!r}; "
                                f"its splits: {', '.join(splits)}")
        m = m.split(split_name)
    for n, sub in nested_subsets(m, sizes, seed).items():
        path = save_manifest(sub, output / f"subset_{n}.jsonl")
        counts = {}
        for r in sub:
            counts[r.label] = counts.get(r.label, 0) + 1
        click.echo(f"{path}: {n} videos, {len(counts)} classes, "
                   f"{min(counts.values())}-{max(counts.values())} per class")


@data.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--videos", type=int, default=None, help="Number of videos (default 300).")
@click.option("--classes", type=int, default=None, help="Number of motion classes (<= 16).")
@click.option("--frames", type=int, default=None, help="Frames per video (default 150).")
@click.option("--size", type=int, default=None, help="Frame side in pixels (default 128: NVDEC decodes VP9 from 128 px).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None)
@click.option("--overwrite", is_flag=True, help="Replace another dataset in OUTPUT (else refused).")
def synth(output, videos, classes, frames, size, seed, workers, overwrite):
    """Generate the synthetic motion dataset into OUTPUT (default: the cache, reused)."""
    from dalivssl.data import synth as s

    if output is None:
        if any(v is not None for v in (videos, classes, frames, size)) or seed:
            raise click.UsageError("custom parameters need an OUTPUT folder")
        paths = s.ensure_default_dataset(progress=True)
    else:
        d = s.DEFAULT
        paths = s.generate(output, videos=videos or d.videos, classes=classes or d.classes,
                           frames=frames or d.frames, size=size or d.size, seed=seed,
                           workers=workers, progress=True, overwrite=overwrite)
    for k, p in paths.items():
        click.echo(f"{k}: {p}")


@data.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="DALI decoder to check codecs against.")
@click.option("--min-frames", type=int, default=0, show_default=True,
              help="Usable frames a video needs (e.g. 129 for PRP rate 8).")
@click.option("--write-clean", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a manifest without the bad records.")
@click.option("--decode/--no-decode", default=False, show_default=True,
              help="Also decode each video's last frame with DALI (slow, catches damage).")
@click.option("--verify", "verify_n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decode N random clips per decode class through the loader's path on "
                   "--device and compare them with PyAV; verdicts go to this machine's cache "
                   "(`dalivssl doctor` shows it). Re-verifies cached classes.")
@click.option("--workers", type=int, default=None)
@click.pass_context
def check(ctx, manifest, device, min_frames, write_clean, decode, verify_n, workers):
    """Report every unusable video with a one-line reason; exit code 1 if any."""
    from dalivssl.data.check import check_manifest
    from dalivssl.data.manifest import load_manifest, save_manifest

    m = load_manifest(manifest)
    if verify_n:
        from dalivssl.data.verify import verify

        got = verify(m, device, verify_n, force=True)
        for cls, e in got.items():
            click.echo(f"{device} {cls}: {e['verdict']} ({e['clips']} clips, e.g. "
                       f"{e.get('example', '')})")
        if any(e["verdict"] != "ok" for e in got.values()):
            return 1
    bad = check_manifest(m, device, min_frames, decode=decode, workers=workers, progress=True)
    for rec, why in bad:
        click.echo(f"{rec.path}: {why}")
    if write_clean is not None:
        drop = {id(r) for r, _ in bad}
        save_manifest(m.select(r for r in m if id(r) not in drop), write_clean)
        click.echo(f"{write_clean}: {len(m) - len(bad)} of {len(m)} videos")
    click.echo(f"{manifest}: {len(bad)} bad of {len(m)} videos", err=True)
    return 1 if bad else 0


@data.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--codec", type=click.Choice(["vp9", "mjpeg", "h264"]), default="vp9",
              show_default=True, help="vp9/mjpeg: DALI CPU decoder; h264: GPU (mixed).")
@click.option("--short-side", type=int, default=128, show_default=True,
              help="Resize so the short side has this many pixels (0: keep).")
@click.option("--gop", type=int, default=16, show_default=True, help="Keyframe interval.")
@click.option("--segment-frames", type=int, default=None,
              help="Cut each video into segments of N frames (a tail < N/2 joins the last).")
@click.option("--workers", type=int, default=None)
@click.option("--overwrite", is_flag=True,
              help="Replace what OUTPUT holds from other settings or sources (else refused).")
def prepare(manifest, output, codec, short_side, gop, segment_frames, workers, overwrite):
    """Transcode MANIFEST's videos into OUTPUT for fast DALI decoding; writes OUTPUT/manifest.jsonl.

    Resumable: finished videos are skipped on a rerun with the same settings.
    """
    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.prepare import prepare as run

    m = load_manifest(manifest)
    new, failures, path = run(m, output, codec=codec, short_side=short_side or None, gop=gop,
                              segment_frames=segment_frames, workers=workers, progress=True,
                              overwrite=overwrite)
    _report(failures, "prepare", path)
    click.echo(f"{path}: {len(new)} records from {len(m) - len(failures)} of {len(m)} videos")
    return 1 if failures else 0
