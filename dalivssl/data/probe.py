"""Probe a video once with PyAV: exact frame count, fps, size and codec.

WebM (Matroska) stores no frame count, so the count comes from demuxing: one packet per frame,
without decoding (fast). ``exact=True`` decodes every frame instead (what DALI will see, and the
only way to catch corruption inside the stream). Every failure is a :class:`VideoError` whose
reason is one of ``REASONS``.
"""
from __future__ import annotations

import os
from pathlib import Path

from dalivssl.data.capabilities import canonical
from dalivssl.errors import VideoError

MISSING = "missing"
EMPTY = "empty file"
NOT_VIDEO = "not a video"
CORRUPT = "truncated or corrupt"
NO_STREAM = "no video stream"
REASONS = (MISSING, EMPTY, NOT_VIDEO, CORRUPT, NO_STREAM)



def probe(path: str | os.PathLike, exact: bool = False, on_packet=None) -> dict:
    """Return dict(num_frames, fps, width, height, codec, pix_fmt) of the first video stream of
    ``path`` (pix_fmt: FFmpeg's name, e.g. 'yuv420p'; the GPU decoder needs 8-bit 4:2:0).

    num_frames counts demuxed video packets (``exact=False``) or decoded frames (``exact=True``).
    Raises VideoError(path, reason) when the file is missing, empty, not a video, has no video
    stream, or is truncated/corrupt (demux or decode error, no frames, or fewer frames than the
    container's duration promises). ``on_packet(packet)``, when given, sees every non-empty
    video packet in decode order (the packet index is recorded in the same pass).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(path, MISSING)
    if path.stat().st_size == 0:
        raise VideoError(path, EMPTY)
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError:
        raise VideoError(path, NOT_VIDEO) from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(path, f"{NOT_VIDEO} ({_short(exc)})") from None
    with container:
        if not container.streams.video:
            raise VideoError(path, NO_STREAM)
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = canonical(ctx.name) if ctx is not None else ""
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0.0)
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        pix_fmt = str(getattr(ctx, "pix_fmt", "") or "") if ctx is not None else ""
        try:
            if exact and on_packet is not None:
                n = 0
                for packet in container.demux(stream):
                    if packet.size:
                        on_packet(packet)
                    n += len(packet.decode())  # the empty flush packet drains the decoder
            elif exact:
                stream.thread_type = "AUTO"
                n = sum(1 for _ in container.decode(stream))
            else:
                n = 0
                last_pts = None
                for packet in container.demux(stream):
                    if packet.size == 0:  # flush packet at end of stream
                        continue
                    n += 1
                    if on_packet is not None:
                        on_packet(packet)
                    if packet.pts is not None:
                        last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"{CORRUPT} ({_short(exc)})") from None
        if n == 0:
            raise VideoError(path, f"{CORRUPT} (no frames)")
        if not exact:
            _check_duration(path, container, stream, n, last_pts)
    if not width and exact is False:
        width, height = _size_by_decoding(path)
    return {"num_frames": n, "fps": round(fps, 6), "width": width, "height": height,
            "codec": codec, "pix_fmt": pix_fmt}


def _check_duration(path, container, stream, n, last_pts) -> None:
    """A cut-off file still demuxes: compare the last packet time and the packet count with the
    container duration (Matroska writes it into the header when muxing ends), with slack."""
    if container.duration is None or last_pts is None or stream.time_base is None:
        return
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return
    start = stream.start_time or 0
    end_s = float((last_pts - start) * stream.time_base) + 1.0 / float(rate)
    total_s = container.duration / 1_000_000.0
    if end_s + 2.0 / float(rate) < total_s:
        raise VideoError(path, f"{CORRUPT} (frames end at {end_s:.2f}s, container says "
                               f"{total_s:.2f}s)")
    # damaged data in the middle: the demuxer resyncs and silently drops the packets in between
    expected = total_s * float(rate)
    if n + 2 < 0.95 * expected:
        raise VideoError(path, f"{CORRUPT} ({n} frames where the duration implies "
                               f"~{expected:.0f}; data missing or damaged)")


def _size_by_decoding(path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            return f.width, f.height
    return 0, 0


def _short(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return msg[:120]
