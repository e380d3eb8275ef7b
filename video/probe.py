"""What a file that FFmpeg cannot open (or decodes with errors) is: the reason a user reads in failures.csv.

`describe_unopenable` looks at a file's content, never its name: text, audio only, an unknown format, or a
video container that is cut off. `ffmpeg_messages` picks FFmpeg's own messages out of captured stderr.
"""

from __future__ import annotations

import os
import re
import struct

_SNIFF_BYTES = 4096
_MAX_MOOV_BYTES = 64 << 20
# FFmpeg's own log lines ("[mjpeg @ 0x55d0c1a2b3c0] huffman table decode error"); OpenCV's ("[ WARN:0@0.1] ...")
# are not decoder errors, nor are the scaler's ("deprecated pixel format used" for full-range JPEG formats).
_FFMPEG_MESSAGE = re.compile(r"^\[([\w,.\-]+) @ 0x[0-9a-fA-F]+\] (.+)$")
_NOT_DECODING = {"swscaler"}


def ffmpeg_messages(log: str) -> list[str]:
    """The demuxers' and decoders' messages in captured stderr text, without their `[codec @ address]`
    prefix."""
    return [m.group(2).strip() for m in map(_FFMPEG_MESSAGE.match, log.splitlines())
            if m and m.group(1) not in _NOT_DECODING]


_TRACK_KINDS = {b"soun": "audio", b"sbtl": "subtitle", b"subt": "subtitle", b"text": "text", b"meta": "metadata",
                b"tmcd": "timecode", b"hint": "hint"}
# Handlers that are not tracks: QuickTime's data references, iTunes-style metadata (udta/meta).
_NOT_TRACKS = {b"alis", b"url ", b"mdir", b"\0\0\0\0", b""}


def _mp4_handler_types(path: str, size: int) -> set[bytes] | None:
    """Track kinds (b"vide", b"soun", ...) in an MP4/QuickTime file's `moov` box; None when the file has no
    complete `moov` (a recording cut off before its index was written, or a truncated copy)."""
    with open(path, "rb") as f:
        position = 0
        while position + 8 <= size:
            f.seek(position)
            header = f.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            body = 8
            if box_size == 1 and len(header) == 16:
                box_size, body = struct.unpack(">Q", header[8:16])[0], 16
            elif box_size == 0:
                box_size = size - position
            if box_size < body:
                return None
            if kind == b"moov":
                if position + box_size > size or box_size > _MAX_MOOV_BYTES:
                    return None
                f.seek(position + body)
                moov = f.read(box_size - body)
                # after "hdlr": version+flags, pre_defined (QuickTime: component type), then the handler type
                return {moov[i + 12 : i + 16] for i in (m.start() for m in re.finditer(b"hdlr", moov))}
            position += box_size
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        if len(head) < _SNIFF_BYTES:
            return False
        try:  # a multi-byte character cut at the end of the sniffed bytes
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def describe_unopenable(path: str) -> str:
    """Why FFmpeg could not open the local file `path`, from its content (never its name): the reason for
    failures.csv."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    if not head:
        return "empty file (0 bytes)"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        tracks = _mp4_handler_types(path, size)
        if tracks is None:
            return "damaged or truncated MP4/QuickTime file (its index, the moov box, is missing or cut off)"
        if b"vide" not in tracks:
            kinds = sorted({_TRACK_KINDS.get(t, t.decode("latin-1").strip()) for t in tracks - _NOT_TRACKS})
            if not kinds:
                return "no video stream (an MP4/QuickTime file with no tracks)"
            return f"no video stream (an MP4/QuickTime file with {' and '.join(kinds)} tracks only)"
        return "damaged MP4/QuickTime file (it lists a video track that FFmpeg cannot open)"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "no video stream (a WAV audio file)"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "no video stream (an MP3/MPEG audio file)"
    if head[:4] == b"fLaC" or (head[:4] == b"OggS" and b"theora" not in head):
        return "no video stream (a FLAC/Ogg audio file)"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "damaged or truncated AVI file"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "damaged or truncated Matroska/WebM file"
    if _looks_like_text(head):
        return "the file holds text"
    return "unrecognised content (no known video container signature)"
