"""Tags and cover art: read once from the input, written onto every stem.

A stem of a tagged song should sort and display next to the song in a music
library, so it carries the input's tags (title, artist, album, track and disc
numbers, date, genre, comment, and the other fields that map across tag
formats) and its embedded pictures, with the stem recorded twice: as a title
suffix ("Title (vocals)") and as a custom field (ID3 ``TXXX:STEM``, Vorbis
comment ``STEM``, MP4 ``----:com.apple.iTunes:STEM``).

Tags are held here in one neutral form (:class:`Tags`: lower-case field names
as Vorbis comments spell them, plus pictures), read from ID3 (MP3, WAV, AIFF),
Vorbis comments (FLAC, Ogg Vorbis, Opus) or MP4 atoms (M4A/MP4), and for other
containers from what FFmpeg reports (PyAV), then written in the output's own
format: ID3v2.4 for MP3 and WAV (its ``id3 `` chunk), Vorbis comments with
FLAC pictures (``METADATA_BLOCK_PICTURE`` in Ogg) for FLAC and Opus, MP4
atoms for M4A and NI Stems files.

Fields that describe the input's *audio* rather than the song are not copied:
ReplayGain and R128 gains (a stem is not as loud as the mix), iTunes
normalisation and gapless data, and the encoder's name.

mutagen (a dependency) is imported only when tags are written; should it be
missing from an environment, stems are written untagged after one warning.
Tag problems never fail a track: a file whose tags cannot be read or written
gives a warning and the audio is kept.
"""

from __future__ import annotations

import base64
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["Picture", "Tags", "read_tags", "write_tags", "available", "STEM_FIELD", "TAG_FORMATS"]

STEM_FIELD = "stem"
# Output formats (audio.FORMATS names, plus "stems") and the tag family each one is written with.
TAG_FORMATS = {"mp3": "id3", "wav": "id3", "flac": "vorbis", "opus": "vorbis", "m4a": "mp4", "stems": "mp4"}

_ITUNES = "----:com.apple.iTunes:"

# Neutral name -> (ID3 frame, Vorbis comment key, MP4 atom). "TXXX:desc" is a user text frame;
# an MP4 name starting with "----" is a freeform atom. Numbers, comment, lyrics, BPM and the
# compilation flag have their own code below.
_TEXT_FIELDS: Dict[str, Tuple[str, str, str]] = {
    "title": ("TIT2", "TITLE", "\xa9nam"),
    "artist": ("TPE1", "ARTIST", "\xa9ART"),
    "album": ("TALB", "ALBUM", "\xa9alb"),
    "albumartist": ("TPE2", "ALBUMARTIST", "aART"),
    "date": ("TDRC", "DATE", "\xa9day"),
    "genre": ("TCON", "GENRE", "\xa9gen"),
    "composer": ("TCOM", "COMPOSER", "\xa9wrt"),
    "grouping": ("TIT1", "GROUPING", "\xa9grp"),
    "copyright": ("TCOP", "COPYRIGHT", "cprt"),
    "titlesort": ("TSOT", "TITLESORT", "sonm"),
    "artistsort": ("TSOP", "ARTISTSORT", "soar"),
    "albumsort": ("TSOA", "ALBUMSORT", "soal"),
    "albumartistsort": ("TSO2", "ALBUMARTISTSORT", "soaa"),
    "composersort": ("TSOC", "COMPOSERSORT", "soco"),
    "publisher": ("TPUB", "LABEL", _ITUNES + "LABEL"),
    "isrc": ("TSRC", "ISRC", _ITUNES + "ISRC"),
    "conductor": ("TPE3", "CONDUCTOR", _ITUNES + "CONDUCTOR"),
    "lyricist": ("TEXT", "LYRICIST", _ITUNES + "LYRICIST"),
    "remixer": ("TPE4", "REMIXER", _ITUNES + "REMIXER"),
    "originaldate": ("TDOR", "ORIGINALDATE", _ITUNES + "ORIGINALDATE"),
    "initialkey": ("TKEY", "INITIALKEY", _ITUNES + "initialkey"),
    "language": ("TLAN", "LANGUAGE", _ITUNES + "LANGUAGE"),
    "mood": ("TMOO", "MOOD", _ITUNES + "MOOD"),
    "media": ("TMED", "MEDIA", _ITUNES + "MEDIA"),
    "musicbrainz_albumid": ("TXXX:MusicBrainz Album Id", "MUSICBRAINZ_ALBUMID", _ITUNES + "MusicBrainz Album Id"),
    "musicbrainz_artistid": ("TXXX:MusicBrainz Artist Id", "MUSICBRAINZ_ARTISTID", _ITUNES + "MusicBrainz Artist Id"),
    "musicbrainz_albumartistid": ("TXXX:MusicBrainz Album Artist Id", "MUSICBRAINZ_ALBUMARTISTID",
                                  _ITUNES + "MusicBrainz Album Artist Id"),
    "musicbrainz_releasegroupid": ("TXXX:MusicBrainz Release Group Id", "MUSICBRAINZ_RELEASEGROUPID",
                                   _ITUNES + "MusicBrainz Release Group Id"),
    "stem": ("TXXX:STEM", "STEM", _ITUNES + "STEM"),
}
_SPECIAL = ("tracknumber", "tracktotal", "discnumber", "disctotal", "comment", "lyrics", "bpm", "compilation")
# Vorbis spellings other programs use for the same fields.
_VORBIS_ALIASES = {"totaltracks": "tracktotal", "totaldiscs": "disctotal", "organization": "publisher",
                   "description": "comment", "key": "initialkey", "album artist": "albumartist",
                   "unsyncedlyrics": "lyrics"}
# Fields about the input's audio or its encoding, not the song (lower-case, prefixes).
_DROP_PREFIXES = ("replaygain_", "r128_", "itunnorm", "itunsmpb", "itunpgap", "encoder", "encodedby", "encoded by",
                  "encoding", "itunes_cddb", "metadata_block_picture", "coverart", "tsse", "tenc", "ufid",
                  "waveformatextensible_channel_mask", "wm/", "ixml", "bext", "handler_name", "vendor_id",
                  "major_brand", "minor_version", "compatible_brands", "creation_time", "duration")

_BY_ID3 = {v[0]: k for k, v in _TEXT_FIELDS.items()}
_BY_VORBIS = {v[1].lower(): k for k, v in _TEXT_FIELDS.items()}
_BY_MP4 = {v[2]: k for k, v in _TEXT_FIELDS.items()}


@dataclass(frozen=True)
class Picture:
    """One embedded picture. `kind` is the ID3/FLAC picture type (3 = front cover)."""

    data: bytes
    mime: str = "image/jpeg"
    kind: int = 3
    description: str = ""


@dataclass
class Tags:
    """Tags in a neutral form: lower-case field name -> values, and pictures, in file order.

    Names are those of `_TEXT_FIELDS` and `_SPECIAL` (Vorbis comment spelling); a field
    with no common name keeps the input's own (a Vorbis key, a TXXX description or an
    iTunes freeform name), so it still crosses between formats.
    """

    fields: Dict[str, List[str]] = field(default_factory=dict)
    pictures: List[Picture] = field(default_factory=list)

    def add(self, name: str, values) -> None:
        name = _VORBIS_ALIASES.get(name.lower(), name)
        if _dropped(name):
            return
        values = [str(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        values = [v for v in values if v.strip()]
        if values:
            self.fields.setdefault(name, [])
            self.fields[name].extend(v for v in values if v not in self.fields[name])

    def first(self, name: str) -> Optional[str]:
        values = self.fields.get(name)
        return values[0] if values else None

    def for_stem(self, stem: Optional[str], fallback_title: str) -> "Tags":
        """A copy naming `stem`: "Title (stem)" (the track's name when there is no title) and the
        stem field; `stem` None keeps the title as it is (the NI Stems file holds the whole song)."""
        fields = {k: list(v) for k, v in self.fields.items()}
        if stem is not None:
            title = self.first("title") or fallback_title
            fields["title"] = [f"{title} ({stem})"]
            fields[STEM_FIELD] = [stem]
        elif not fields.get("title") and fallback_title:
            fields["title"] = [fallback_title]
        return Tags(fields, list(self.pictures))


def _dropped(name: str) -> bool:
    low = name.lower()
    return any(low.startswith(p) for p in _DROP_PREFIXES)


# --------------------------------------------------------------------------- availability

_warned_missing = False


def available() -> bool:
    """Whether mutagen can be imported; the first time it cannot, one warning says so."""
    global _warned_missing
    try:
        import mutagen  # noqa: F401
    except ImportError:
        if not _warned_missing:
            _warned_missing = True
            warnings.warn("mutagen is not installed: stems are written without tags or cover art "
                          "(pip install mutagen)", RuntimeWarning, stacklevel=2)
        return False
    return True


# --------------------------------------------------------------------------- reading


def read_tags(path) -> Optional[Tags]:
    """The tags and pictures of the file at `path` (None when mutagen is missing).

    A file with no tags gives an empty :class:`Tags`; one whose tags cannot be parsed
    gives a warning and an empty :class:`Tags` (the audio may still be fine).
    """
    if not available():
        return None
    import mutagen
    from mutagen.id3 import ID3
    from mutagen.mp4 import MP4Tags

    path = Path(path)
    tags = Tags()
    try:
        f = mutagen.File(path)
        found = getattr(f, "tags", None) if f is not None else None
        if isinstance(found, ID3):
            _read_id3(found, tags)
        elif isinstance(found, MP4Tags):
            _read_mp4(found, tags)
        elif found is not None and _is_vorbis(found):
            _read_vorbis(found, tags)
        for pic in getattr(f, "pictures", None) or []:  # FLAC picture blocks
            tags.pictures.append(Picture(bytes(pic.data), pic.mime or _sniff(pic.data), int(pic.type), pic.desc))
    except Exception as exc:  # noqa: BLE001 - mutagen raises many types for damaged tags
        warnings.warn(f"{path}: tags not copied: they cannot be read ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=2)
        return Tags()
    if not tags.fields and not tags.pictures:
        _read_ffmpeg(path, tags)  # APE, WMA, Matroska... : what FFmpeg sees
    return tags


def _is_vorbis(found) -> bool:
    from mutagen._vorbis import VComment

    return isinstance(found, VComment)


def _split_number(value: str) -> Tuple[str, str]:
    """'3/12' -> ('3', '12'); '3' -> ('3', '')."""
    number, _, total = str(value).partition("/")
    return number.strip(), total.strip()


def _read_id3(id3, tags: Tags) -> None:
    for frame in id3.values():
        fid = frame.FrameID
        if fid in ("TRCK", "TPOS"):
            number, total = _split_number(frame.text[0] if frame.text else "")
            base = "track" if fid == "TRCK" else "disc"
            tags.add(base + "number", number)
            tags.add(base + "total", total)
        elif fid == "TCON":
            tags.add("genre", frame.genres)
        elif fid == "TXXX":
            tags.add(_BY_ID3.get("TXXX:" + frame.desc, frame.desc), list(frame.text))
        elif fid == "COMM":
            if not frame.desc:  # iTunes keeps its own data in described COMM frames
                tags.add("comment", list(frame.text))
        elif fid == "USLT":
            tags.add("lyrics", frame.text)
        elif fid == "TBPM":
            tags.add("bpm", list(frame.text))
        elif fid == "TCMP":
            tags.add("compilation", "1" if frame.text and str(frame.text[0]) not in ("", "0") else "")
        elif fid == "APIC":
            tags.pictures.append(Picture(bytes(frame.data), frame.mime or _sniff(frame.data), int(frame.type),
                                         frame.desc))
        elif fid in _BY_ID3:
            tags.add(_BY_ID3[fid], [str(t) for t in frame.text])


def _read_vorbis(comments, tags: Tags) -> None:
    from mutagen.flac import Picture as FlacPicture

    for key, value in comments:
        low = key.lower()
        if low == "metadata_block_picture":
            try:
                pic = FlacPicture(base64.b64decode(value))
            except Exception:  # noqa: BLE001 - one bad picture does not lose the other tags
                continue
            tags.pictures.append(Picture(bytes(pic.data), pic.mime or _sniff(pic.data), int(pic.type), pic.desc))
        elif low in ("tracknumber", "discnumber"):
            number, total = _split_number(value)
            tags.add(low, number)
            tags.add(low.replace("number", "total"), total)
        else:
            tags.add(_BY_VORBIS.get(low, _VORBIS_ALIASES.get(low, low)), value)


def _read_mp4(mp4, tags: Tags) -> None:
    for key, values in mp4.items():
        if key in ("trkn", "disk"):
            number, total = (values[0] + (0,))[:2] if values else (0, 0)
            base = "track" if key == "trkn" else "disc"
            tags.add(base + "number", str(number) if number else "")
            tags.add(base + "total", str(total) if total else "")
        elif key == "tmpo":
            tags.add("bpm", [str(v) for v in values])
        elif key == "cpil":
            tags.add("compilation", "1" if values else "")
        elif key == "\xa9cmt":
            tags.add("comment", list(values))
        elif key == "\xa9lyr":
            tags.add("lyrics", list(values))
        elif key == "covr":
            for cover in values:
                mime = "image/png" if cover.imageformat == cover.FORMAT_PNG else "image/jpeg"
                tags.pictures.append(Picture(bytes(cover), mime, 3, ""))
        elif key.startswith("----:"):
            name = _BY_MP4.get(key, key.split(":", 2)[-1])
            tags.add(name, [bytes(v).decode("utf-8", "replace") for v in values])
        elif key in _BY_MP4:
            tags.add(_BY_MP4[key], [str(v) for v in values])


# FFmpeg's generic tag names (what PyAV reports for any container) -> ours.
_FFMPEG_NAMES = {"album_artist": "albumartist", "track": "tracknumber", "disc": "discnumber",
                 "comment": "comment", "lyrics": "lyrics", "publisher": "publisher", "copyright": "copyright"}


def _read_ffmpeg(path: Path, tags: Tags) -> None:
    try:
        import av

        with av.open(str(path)) as container:
            meta = dict(container.metadata)
            if container.streams.audio:
                meta = {**dict(container.streams.audio[0].metadata), **meta}
    except Exception:  # noqa: BLE001 - decoding reports unreadable files; tags are best effort
        return
    for key, value in meta.items():
        low = key.lower()
        name = _FFMPEG_NAMES.get(low, _BY_VORBIS.get(low, low))
        if name in ("tracknumber", "discnumber"):
            number, total = _split_number(value)
            tags.add(name, number)
            tags.add(name.replace("number", "total"), total)
        else:
            tags.add(name, value)


def _sniff(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "image/jpeg"


# --------------------------------------------------------------------------- writing


def write_tags(path, fmt: str, tags: Tags) -> bool:
    """Write `tags` into the finished audio file at `path`, whose format is `fmt`.

    `fmt` is an output format name (see `TAG_FORMATS`); the file's name does not matter
    (stems are tagged under their temporary name, before the rename into place). Returns
    whether tags were written; a failure is a warning, never an error.
    """
    family = TAG_FORMATS.get(fmt)
    if family is None or not available():
        return False
    path = Path(path)
    try:
        if family == "id3":
            _write_id3(path, fmt, tags)
        elif family == "vorbis":
            _write_vorbis(path, fmt, tags)
        else:
            _write_mp4(path, tags)
    except Exception as exc:  # noqa: BLE001 - a tag failure must not lose the stem
        warnings.warn(f"{path}: written without tags ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
        return False
    return True


def _number(tags: Tags, base: str) -> Tuple[str, str]:
    return tags.first(base + "number") or "", tags.first(base + "total") or ""


def _write_id3(path: Path, fmt: str, tags: Tags) -> None:
    from mutagen import id3

    if fmt == "wav":
        from mutagen.wave import WAVE

        audio = WAVE(path)
        if audio.tags is None:
            audio.add_tags()
        frames = audio.tags
    else:
        frames = id3.ID3()
    for name, values in tags.fields.items():
        if name in _SPECIAL:
            continue
        # A custom field read from a Vorbis comment arrives lower-case; ID3 programs write them upper-case.
        fid = _TEXT_FIELDS[name][0] if name in _TEXT_FIELDS else "TXXX:" + (name.upper() if name.islower() else name)
        if fid.startswith("TXXX:"):
            frames.add(id3.TXXX(encoding=3, desc=fid[5:], text=values))
        else:
            frames.add(getattr(id3, fid)(encoding=3, text=values))
    for fid, base in (("TRCK", "track"), ("TPOS", "disc")):
        number, total = _number(tags, base)
        if number:
            frames.add(getattr(id3, fid)(encoding=3, text=f"{number}/{total}" if total else number))
    if tags.fields.get("comment"):
        frames.add(id3.COMM(encoding=3, lang="eng", desc="", text=tags.fields["comment"]))
    if tags.first("lyrics"):
        frames.add(id3.USLT(encoding=3, lang="eng", desc="", text=tags.first("lyrics")))
    if tags.first("bpm"):
        frames.add(id3.TBPM(encoding=3, text=tags.first("bpm")))
    if tags.first("compilation"):
        frames.add(id3.TCMP(encoding=3, text="1"))
    seen = set()
    for pic in tags.pictures:
        desc = pic.description
        while desc in seen:  # APIC frames are keyed by description: keep every picture
            desc += " "
        seen.add(desc)
        frames.add(id3.APIC(encoding=3, mime=pic.mime, type=pic.kind, desc=desc, data=pic.data))
    if fmt == "wav":
        audio.save(v2_version=4)
    else:
        frames.save(path, v2_version=4)


def _vorbis_key(name: str) -> str:
    return _TEXT_FIELDS[name][1] if name in _TEXT_FIELDS else name.upper()


def _write_vorbis(path: Path, fmt: str, tags: Tags) -> None:
    from mutagen.flac import FLAC
    from mutagen.flac import Picture as FlacPicture
    from mutagen.oggopus import OggOpus

    audio = FLAC(path) if fmt == "flac" else OggOpus(path)
    if audio.tags is None:
        audio.add_tags()
    for name, values in tags.fields.items():
        if name in ("compilation",):
            audio.tags["COMPILATION"] = ["1"]
        else:
            audio.tags[_vorbis_key(name)] = list(values)
    pictures = []
    for pic in tags.pictures:
        p = FlacPicture()
        p.data, p.mime, p.type, p.desc = pic.data, pic.mime, pic.kind, pic.description
        pictures.append(p)
    if fmt == "flac":
        for p in pictures:
            audio.add_picture(p)
    elif pictures:
        audio.tags["METADATA_BLOCK_PICTURE"] = [base64.b64encode(p.write()).decode("ascii") for p in pictures]
    audio.save()


def _write_mp4(path: Path, tags: Tags) -> None:
    from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

    audio = MP4(path)
    if audio.tags is None:
        audio.add_tags()
    out = audio.tags
    for name, values in tags.fields.items():
        if name in _SPECIAL:
            continue
        key = _TEXT_FIELDS[name][2] if name in _TEXT_FIELDS else _ITUNES + (name.upper() if name.islower() else name)
        if key.startswith("----:"):
            out[key] = [MP4FreeForm(v.encode("utf-8")) for v in values]
        else:
            out[key] = list(values)
    for key, base in (("trkn", "track"), ("disk", "disc")):
        number, total = _number(tags, base)
        if number.isdigit():
            out[key] = [(int(number), int(total) if total.isdigit() else 0)]
    if tags.fields.get("comment"):
        out["\xa9cmt"] = list(tags.fields["comment"])
    if tags.first("lyrics"):
        out["\xa9lyr"] = [tags.first("lyrics")]
    bpm = tags.first("bpm")
    if bpm:
        try:
            out["tmpo"] = [int(round(float(bpm)))]
        except ValueError:
            pass
    if tags.first("compilation"):
        out["cpil"] = True
    covers = []
    for pic in tags.pictures:  # MP4 holds JPEG and PNG only; other pictures are left out
        if pic.mime in ("image/jpeg", "image/jpg"):
            covers.append(MP4Cover(pic.data, imageformat=MP4Cover.FORMAT_JPEG))
        elif pic.mime == "image/png":
            covers.append(MP4Cover(pic.data, imageformat=MP4Cover.FORMAT_PNG))
    if covers:
        out["covr"] = covers
    audio.save()
