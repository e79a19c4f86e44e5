"""`dalivssl corrupt IN OUT --noise N --severity S`: write a noise-corrupted copy of a video.

Uses the same DALI noise graph as the robustness sweep (pipelines/noise.py), so the file shows
what the model sees (modulo the model's resize: the sweep adds noise at model resolution).
"""
from __future__ import annotations

from pathlib import Path

import click

NOISE_CHOICES = ("gaussian", "shot", "impulse", "speckle")
CONSTANT_CHOICES = ("imagenet-c", "schiappa")
# output suffix -> codec of dalivssl.data.videoio.CODECS
SUFFIX_CODECS = {".webm": "vp9", ".mkv": "vp9", ".avi": "mjpeg", ".mp4": "h264"}


def _fps(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
    return float(rate) if rate else 25.0


@click.command("corrupt")
@click.argument("in_path", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out_path", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--noise", required=True, type=click.Choice(NOISE_CHOICES), help="Noise type.")
@click.option("--severity", required=True, type=click.IntRange(1, 5), help="Severity 1..5.")
@click.option("--constants", default="imagenet-c", show_default=True,
              type=click.Choice(CONSTANT_CHOICES),
              help="Severity constants: imagecorruptions (ImageNet-C) or Schiappa et al.'s mix.")
@click.option("--rounding", default="floor", show_default=True, type=click.Choice(["floor", "round"]),
              help="floor = imagecorruptions' uint8 truncation; round = plain DALI ops.")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed.")
@click.option("--codec", default=None, type=click.Choice(["vp9", "vp8", "mjpeg", "h264", "mpeg4"]),
              help="Output codec (default from OUT's suffix: .webm/.mkv vp9, .avi mjpeg, .mp4 h264).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]),
              help="Where DALI adds the noise.")
def corrupt(in_path, out_path, noise, severity, constants, rounding, seed, codec, device):
    """Decode IN, add NOISE at SEVERITY to every frame independently, write OUT.

    OUT is re-encoded with a lossy codec (vp9, vp8, mjpeg, h264, mpeg4): the encoder removes part
    of the noise, so the report gives both the noise std added and the one measured in OUT.

    A truncated or damaged IN is refused (its missing frames would silently be left out)."""
    from dalivssl.errors import DalivsslError, VideoError

    if not in_path.is_file():
        raise VideoError(in_path, "video not found")
    if codec is None:
        codec = SUFFIX_CODECS.get(out_path.suffix.lower())
        if codec is None:
            raise DalivsslError(f"{out_path}: cannot pick a codec for suffix {out_path.suffix!r}; "
                                f"use one of {', '.join(SUFFIX_CODECS)} or pass --codec")
    if out_path.resolve() == in_path.resolve():
        raise DalivsslError(f"{out_path}: output would overwrite the input")

    from dalivssl.console import stderr_console
    from dalivssl.data.videoio import decode_frames, write_video
    from pipelines.noise import corrupt as corrupt_frames

    from dalivssl.data.probe import probe

    console = stderr_console()
    with console.status(f"decoding {in_path.name}"):
        expected = probe(in_path)["num_frames"]  # truncated/corrupt: VideoError with the reason
        try:
            frames = decode_frames(in_path)
            fps = _fps(in_path)
        except Exception as exc:  # PyAV raises many types; the user needs the file and the reason
            raise VideoError(in_path, f"cannot decode ({str(exc).splitlines()[0][:120] or type(exc).__name__})") from None
    if len(frames) < expected:
        raise VideoError(in_path, f"truncated or corrupt: {len(frames)} of {expected} frames "
                                  f"decode; refusing to write a shorter copy")
    with console.status(f"adding {noise} noise, severity {severity} ({len(frames)} frames)"):
        try:
            noisy = corrupt_frames(frames, noise, severity, constants=constants, seed=seed,
                                   device=device, rounding=rounding)
        except ValueError as exc:
            raise DalivsslError(f"{in_path}: {exc}") from None
    with console.status(f"writing {out_path.name}"):
        try:
            write_video(out_path, noisy, fps=max(1, round(fps)), codec=codec)
        except Exception as exc:
            raise DalivsslError(f"{out_path}: cannot write {codec} video "
                                f"({str(exc).splitlines()[0][:120] or type(exc).__name__})") from None
    added = float((noisy.astype("float32") - frames).std())
    try:  # what the written (lossily re-encoded) file holds, not what went into the encoder
        written = decode_frames(out_path)
        kept = (f"{float((written.astype('float32') - frames).std()):.1f} in the written file"
                if written.shape == frames.shape else
                f"the written file decodes to {written.shape}, not {frames.shape}")
    except Exception as exc:
        kept = f"the written file cannot be read back ({str(exc).splitlines()[0][:80]})"
    console.print(f"wrote {out_path}: {len(noisy)} frames {noisy.shape[2]}x{noisy.shape[1]}, "
                  f"{noise} s{severity} ({constants}), noise std {added:.1f} levels added, "
                  f"{kept} ({codec} is lossy: the encoder removes part of the noise)",
                  highlight=False, soft_wrap=True)
