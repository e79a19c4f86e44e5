"""Packet index of a video and the smallest decodable sub-stream covering a plan (numpy only).

``fn.decoders.video`` decodes from the first packet of whatever it is given (DALI ``fn.decoders.video`` documentation), so
the loader gives it only the packets from the keyframe before the first needed frame to the last
needed frame, re-wrapped as a stream libavformat demuxes from memory: IVF for VP8/VP9 (frames
bit-identical to the full-file decode), and for H.264/HEVC a minimal Matroska
remux of the ranges (:func:`mkv_stream`) whose blocks carry each packet's presentation time:
NVDEC through DALI returns pictures in decode order and restores display order only from packet
timestamps, which raw Annex B (:func:`annexb_stream`, kept for the decode-order probe) does not
carry. Frame indices are shifted to the sub-stream.

A :class:`PacketIndex` holds one video's packets in decode order; a :class:`PacketTable` holds
those of a whole manifest in one memory-mapped sidecar (``<manifest>.packets.npz``, uncompressed,
arrays concatenated, CSR row offsets), so a 650k-video manifest opens in milliseconds.
"""
from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IVF_FOURCC = {"vp8": b"VP80", "vp9": b"VP90"}
ANNEXB_CODECS = ("h264", "hevc")
RANGE_CODECS = tuple(IVF_FOURCC) + ANNEXB_CODECS  # codecs a sub-stream can be built for
# codecs whose sub-streams the loader uses by default, per DALI backend: VP8/VP9 as IVF are
# bit-identical to whole-file decoding on CPU (tests/pipelines/test_packets.py) and take the same
# libavformat demuxer on 'mixed'; H.264/HEVC Matroska sub-streams are checked with PyAV only, so
# on 'gpu' they are used for a decode class only once ``dalivssl.data.verify`` has verified that
# class's sub-streams ``ok`` on this machine (``PretextLoader(gop_ranges='all')`` forces them).
DEFAULT_RANGE_CODECS = {"cpu": tuple(IVF_FOURCC), "gpu": tuple(IVF_FOURCC)}
START_CODE = b"\x00\x00\x00\x01"


@dataclass(frozen=True)
class PacketIndex:
    """One video's packets in decode order (P packets, one frame each).

    offset int64 (P,): byte offset of each packet's data in the file; size int32 (P,);
    key bool (P,): keyframe (decoding may start there); pres int32 (P,): presentation rank, i.e.
    the frame index the packet yields (arange(P) without B-frames); codec: 'vp9', 'h264', …;
    header: the container's codec extradata (avcC/hvcC for H.264/HEVC; b'' otherwise);
    width, height: coded size; file_size: bytes of the file when it was indexed.
    """

    offset: np.ndarray
    size: np.ndarray
    key: np.ndarray
    pres: np.ndarray
    codec: str
    header: bytes = b""
    width: int = 0
    height: int = 0
    file_size: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.offset.shape[0])

    @property
    def supported(self) -> bool:
        """Whether sub-streams can be built (a known codec, a keyframe at packet 0)."""
        return (self.codec in RANGE_CODECS and self.num_frames > 0 and bool(self.key[0])
                and (self.codec not in ANNEXB_CODECS or len(self.header) > 0))

    def decodable_frames(self, file_size: int) -> int:
        """Frames 0..n-1 decodable from a file now ``file_size`` bytes long: every packet a frame
        below n needs lies inside the file (a truncated tail loses the frames it carried)."""
        whole = (self.offset + self.size) <= int(file_size)
        if whole.all():
            return self.num_frames
        first_cut = int(np.argmin(whole))  # decode order: nothing after a cut packet decodes
        if first_cut == 0:
            return 0
        return int(self.pres[first_cut:].min())  # the lowest frame the cut-off packets carry

    def keyframes(self) -> np.ndarray:
        """int64 (Kf,) frame indices of the keyframes."""
        return np.sort(self.pres[self.key].astype(np.int64))


@dataclass(frozen=True)
class SubStream:
    """A plan's frames as a stream of their own.

    data uint8 (bytes,): IVF/Annex B bytes; frames int64 like the plan's: indices into the
    sub-stream; ranges: [(first, end)] packet ranges (decode order, end exclusive);
    decoded: frames the decoder will decode (sum of the range lengths).
    """

    data: np.ndarray
    frames: np.ndarray
    ranges: tuple[tuple[int, int], ...]
    decoded: int


# ------------------------------------------------------------------------------------------------
# choosing the ranges

def _cover(index: PacketIndex, lo: int, hi: int, decode_pos: np.ndarray) -> tuple[int, int]:
    """Packet range [k, e) starting at a keyframe whose frames are exactly the contiguous frames
    pres[k] .. pres[k] + (e - k) - 1 and include frames lo..hi."""
    keys = np.flatnonzero(index.key)
    cand = keys[index.pres[keys] <= lo]
    for k in cand[::-1]:  # nearest keyframe first; earlier ones if the GOP is open
        k = int(k)
        top = hi
        while True:
            e = int(decode_pos[int(index.pres[k]):top + 1].max()) + 1
            got = index.pres[k:e]
            if got.min() < index.pres[k]:
                break  # a frame shown before the keyframe is decoded after it: open GOP
            if int(got.max()) == top and np.unique(got).size == e - k:
                return k, e
            top = int(got.max())
    return 0, index.num_frames  # no usable keyframe: the whole stream


def choose_ranges(index: PacketIndex, frames) -> list[tuple[int, int]]:
    """Packet ranges [(k, e)] whose decode covers ``frames`` (any shape, any order) with the
    fewest frames decoded: the needed frames are split between consecutive needed frames a < b
    when a keyframe lies in (a, b] (decoding from it instead of through the gap is never
    dearer); ranges that touch are merged."""
    need = np.unique(np.asarray(frames, np.int64).reshape(-1))
    if need.size == 0:
        return []
    n = index.num_frames
    if need[0] < 0 or need[-1] >= n:
        raise IndexError(f"frames {int(need[0])}..{int(need[-1])} outside the {n} indexed")
    decode_pos = np.empty(n, np.int64)
    decode_pos[index.pres] = np.arange(n)
    kf = index.keyframes()
    # a keyframe in (a, b] between consecutive needed frames a < b splits the run
    slot = np.searchsorted(kf, need, side="right")  # keyframes <= each needed frame
    split = np.flatnonzero(slot[1:] > np.searchsorted(kf, need[:-1], side="right")) + 1
    ranges: list[tuple[int, int]] = []
    for run in np.split(need, split):
        k, e = _cover(index, int(run[0]), int(run[-1]), decode_pos)
        if ranges and k <= ranges[-1][1]:  # touching or overlapping (open GOPs): merge
            prev = ranges.pop()
            k, e = min(k, prev[0]), max(e, prev[1])
        ranges.append((k, e))
    return ranges


def shift_frames(index: PacketIndex, ranges, frames) -> np.ndarray:
    """Map file frame indices to indices in the sub-stream made of ``ranges`` (same shape)."""
    f = np.asarray(frames, np.int64)
    firsts = np.array([int(index.pres[k]) for k, _ in ranges], np.int64)
    lens = np.array([e - k for k, e in ranges], np.int64)
    base = np.concatenate([[0], np.cumsum(lens)[:-1]])
    j = np.searchsorted(firsts, f, side="right") - 1
    if (j < 0).any() or (f - firsts[j] >= lens[j]).any():
        raise IndexError("a frame lies outside the chosen ranges")
    return base[j] + f - firsts[j]


# ------------------------------------------------------------------------------------------------
# building the bytes

def ivf_header(codec: str, width: int, height: int, num_frames: int) -> bytes:
    """32-byte IVF file header (time base 1/30: IVF timestamps only order the frames)."""
    return struct.pack("<4sHH4sHHIIII", b"DKIF", 0, 32, IVF_FOURCC[codec], int(width),
                       int(height), 30, 1, int(num_frames), 0)


def ivf_stream(codec: str, width: int, height: int, packets: list[bytes]) -> bytes:
    """IVF bytes of raw VP8/VP9 ``packets`` (frame i gets timestamp i)."""
    out = [ivf_header(codec, width, height, len(packets))]
    for i, p in enumerate(packets):
        out.append(struct.pack("<IQ", len(p), i))
        out.append(p)
    return b"".join(out)


def parameter_sets(codec: str, extradata: bytes) -> tuple[bytes, int]:
    """(Annex B parameter sets, NAL length size) from an avcC/hvcC record; extradata that is
    already Annex B is returned as is (length size 0: packets are Annex B too)."""
    d = bytes(extradata)
    if d[:4] == START_CODE or d[:3] == b"\x00\x00\x01":
        return d, 0
    nals: list[bytes] = []
    if codec == "h264":
        length_size = (d[4] & 3) + 1
        pos, count = 6, d[5] & 0x1F
        for group in range(2):
            for _ in range(count):
                n = struct.unpack(">H", d[pos:pos + 2])[0]
                nals.append(d[pos + 2:pos + 2 + n])
                pos += 2 + n
            if group == 0:
                count, pos = d[pos], pos + 1
    elif codec == "hevc":
        length_size = (d[21] & 3) + 1
        pos, arrays = 23, d[22]
        for _ in range(arrays):
            count = struct.unpack(">H", d[pos + 1:pos + 3])[0]
            pos += 3
            for _ in range(count):
                n = struct.unpack(">H", d[pos:pos + 2])[0]
                nals.append(d[pos + 2:pos + 2 + n])
                pos += 2 + n
    else:
        raise ValueError(f"no parameter sets for codec {codec!r}")
    return b"".join(START_CODE + n for n in nals), length_size


def annexb_packet(packet: bytes, length_size: int) -> bytes:
    """Length-prefixed NAL units (MP4/MKV) -> Annex B (start codes)."""
    if length_size == 0:
        return packet
    out, pos, n = [], 0, len(packet)
    while pos + length_size <= n:
        size = int.from_bytes(packet[pos:pos + length_size], "big")
        pos += length_size
        out.append(START_CODE + packet[pos:pos + size])
        pos += size
    return b"".join(out)


def read_packets(path, index: PacketIndex, ranges) -> list[list[bytes]]:
    """The raw bytes of every packet of every range, read from ``path`` (one open, seeks)."""
    out = []
    with open(path, "rb") as f:
        for k, e in ranges:
            lo, hi = int(index.offset[k]), int(index.offset[e - 1] + index.size[e - 1])
            f.seek(lo)
            blob = f.read(hi - lo)
            if len(blob) < hi - lo:
                raise EOFError(f"{path}: ends inside packet range {k}..{e - 1}")
            offs = index.offset[k:e] - lo
            out.append([blob[o:o + s] for o, s in zip(offs.tolist(), index.size[k:e].tolist())])
    return out


def annexb_stream(index: PacketIndex, packets: list[list[bytes]]) -> bytes:
    """Annex B bytes of H.264/HEVC ranges (parameter sets in front of each range). Carries no
    timestamps: a decoder that orders pictures by pts returns them in decode order (R1)."""
    sets, length_size = parameter_sets(index.codec, index.header)
    return b"".join(sets + b"".join(annexb_packet(p, length_size) for p in rng)
                    for rng in packets)


def substream_pts(index: PacketIndex, ranges) -> np.ndarray:
    """int64 (decoded,): each sub-stream packet's presentation position in the sub-stream (the
    frame index it yields), in decode order, offset so that pts >= decode position (muxers
    refuse pts < dts); ``pts - pts.min()`` are the frame indices."""
    parts, base = [], 0
    for k, e in ranges:
        parts.append(index.pres[k:e].astype(np.int64) - int(index.pres[k]) + base)
        base += e - k
    pts = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    delay = int(max(0, (np.arange(pts.size) - pts).max(initial=0)))
    return pts + delay


def mkv_stream(path, index: PacketIndex, ranges, packets: list[list[bytes]]) -> bytes:
    """A minimal Matroska remux (PyAV) of the ranges: the source stream's codec parameters (the
    container header of ``path``), one block per packet stamped with its presentation time
    (:func:`substream_pts`, 40 ms per frame), decode order kept."""
    import io
    from fractions import Fraction

    import av

    pts = substream_pts(index, ranges)
    buf = io.BytesIO()
    tb = Fraction(1, 1000)
    with av.open(str(path)) as src, av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        keys = np.concatenate([index.key[k:e] for k, e in ranges])
        for j, data in enumerate(p for rng in packets for p in rng):
            pkt = av.Packet(data)
            pkt.stream, pkt.time_base = stream, tb
            pkt.pts, pkt.dts = int(pts[j]) * 40, j * 40
            pkt.is_keyframe = bool(keys[j])
            out.mux(pkt)
    return buf.getvalue()


def build_stream(index: PacketIndex, ranges, packets: list[list[bytes]], path=None,
                 fmt: str = "") -> bytes:
    """Sub-stream bytes of ``ranges`` from their ``packets`` (``read_packets``): IVF for
    VP8/VP9; for H.264/HEVC Matroska (``fmt`` 'mkv', the default; needs ``path``) or raw
    Annex B (``fmt`` 'annexb')."""
    if index.codec in IVF_FOURCC:
        flat = [p for rng in packets for p in rng]
        return ivf_stream(index.codec, index.width, index.height, flat)
    if index.codec in ANNEXB_CODECS:
        if (fmt or "mkv") == "annexb":
            return annexb_stream(index, packets)
        return mkv_stream(path, index, ranges, packets)
    raise ValueError(f"no sub-stream format for codec {index.codec!r}")


def substream(path, index: PacketIndex, frames, fmt: str = "") -> SubStream:
    """The smallest stream covering ``frames`` of the video at ``path`` (see module docstring;
    ``fmt``: see :func:`build_stream`)."""
    ranges = choose_ranges(index, frames)
    data = build_stream(index, ranges, read_packets(path, index, ranges), path, fmt)
    return SubStream(np.frombuffer(data, np.uint8), shift_frames(index, ranges, frames),
                     tuple(ranges), int(sum(e - k for k, e in ranges)))


# ------------------------------------------------------------------------------------------------
# the sidecar of a manifest

_ARRAYS = ("rows", "offset", "size", "key", "pres", "header_rows", "header", "codec", "width",
           "height", "file_size")


def save_table(indexes: list[PacketIndex | None], path) -> Path:
    """Write one sidecar for ``indexes`` (row i = indexes[i]; None = an empty row), atomically."""
    path = Path(path)
    present = [ix for ix in indexes if ix is not None]
    counts = np.array([ix.num_frames if ix is not None else 0 for ix in indexes], np.int64)
    hdr = np.array([len(ix.header) if ix is not None else 0 for ix in indexes], np.int64)

    def cat(name, dt):
        return (np.concatenate([getattr(ix, name) for ix in present]).astype(dt) if present
                else np.zeros(0, dt))

    meta = [(ix.codec, ix.width, ix.height, ix.file_size) if ix is not None else ("", 0, 0, -1)
            for ix in indexes]
    arrays = {
        "rows": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "offset": cat("offset", np.int64), "size": cat("size", np.int32),
        "key": cat("key", np.bool_), "pres": cat("pres", np.int32),
        "header_rows": np.concatenate([[0], np.cumsum(hdr)]).astype(np.int64),
        "header": np.frombuffer(b"".join(ix.header for ix in present), np.uint8),
        "codec": np.array([m[0] for m in meta], dtype="U8"),
        "width": np.array([m[1] for m in meta], np.int32),
        "height": np.array([m[2] for m in meta], np.int32),
        "file_size": np.array([m[3] for m in meta], np.int64)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # uncompressed: members can be memory-mapped
    os.replace(tmp, path)
    return path


def _memmap_npz(path) -> dict[str, np.ndarray]:
    """Memory-map every member of an uncompressed .npz (nothing is read but the headers)."""
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: compressed member {info.filename}")
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if int(np.prod(shape)) == 0:
                out[name] = np.zeros(shape, dtype)
            else:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                      order="F" if fortran else "C")
    return out


class PacketTable:
    """The packet indexes of one manifest, memory-mapped from its sidecar; ``table[row]`` is a
    :class:`PacketIndex` or None (row not indexed)."""

    def __init__(self, path):
        self.path = Path(path)
        a = _memmap_npz(self.path)
        missing = [k for k in _ARRAYS if k not in a]
        if missing:
            raise ValueError(f"{self.path}: not a packet sidecar (missing {', '.join(missing)})")
        self._a = a

    def __len__(self) -> int:
        return int(self._a["rows"].shape[0]) - 1

    def __reduce__(self):  # pickled as its path (worker processes map the file themselves)
        return (PacketTable, (str(self.path),))

    def __getitem__(self, row: int) -> PacketIndex | None:
        a = self._a
        row = int(row)
        if not 0 <= row < len(self) or int(a["file_size"][row]) < 0:
            return None
        lo, hi = int(a["rows"][row]), int(a["rows"][row + 1])
        h0, h1 = int(a["header_rows"][row]), int(a["header_rows"][row + 1])
        return PacketIndex(np.array(a["offset"][lo:hi]), np.array(a["size"][lo:hi]),
                           np.array(a["key"][lo:hi]), np.array(a["pres"][lo:hi]),
                           str(a["codec"][row]), bytes(a["header"][h0:h1]),
                           int(a["width"][row]), int(a["height"][row]),
                           int(a["file_size"][row]))
