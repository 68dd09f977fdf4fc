"""Checks of what a user typed or an API caller sent, at the edge: every failure is a SightlineError that says
what is wrong, never a ValueError from int() or an SQL error from a query too long for SQLite.

storage uses them (video_by_ref, search) and so do the CLI and the UI handlers, which check their inputs
before they call anything. Text is kept as typed (no silent repair) except zero-width spaces and byte-order
marks, which carry nothing and break word matching.
"""

from __future__ import annotations

import operator
import unicodedata
from collections.abc import Iterable

from storage.errors import SightlineError

MAX_PATH_CHARS = 4096  # Linux PATH_MAX
MAX_NAME_BYTES = 255  # Linux NAME_MAX: one file or folder name
MAX_ID_DIGITS = 18  # fits SQLite's signed 64-bit INTEGER
MAX_REF_CHARS = MAX_PATH_CHARS  # a video given by id, path or file name
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\ufeff\u2060"))  # zero-width space, BOM, word joiner
_SHOWN = 60  # characters of a bad input quoted back in a message


def shown(value: object) -> str:
    """A user's input quoted in a message: repr, shortened, lone surrogates escaped."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > _SHOWN:
        text = text[:_SHOWN] + "…"
    return repr(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def text(value: object, what: str, max_chars: int | None = None, hint: str = "") -> str:
    """`value` as text (bytes decoded as strict UTF-8): refused when not text, not valid UTF-8 (a lone
    surrogate, as Python holds undecodable argv bytes and JSON's "\\ud800"), holding a NUL, or over max_chars."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise SightlineError(f"The {what} is not valid UTF-8 text (a bad byte at position {err.start}).",
                                 hint=hint or "Type it again as plain text.") from None
    if not isinstance(value, str):
        raise SightlineError(f"The {what} must be text, not {type(value).__name__}.",
                             hint=hint or "Send a string.")
    bad = next((i for i, ch in enumerate(value) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None and "\udc80" <= value[bad] <= "\udcff":  # how Python holds bytes of argv that are not UTF-8
        raise SightlineError(f"The {what} holds a byte that is not UTF-8 (at character {bad + 1}).",
                             hint=hint or "Type it again as plain UTF-8 text.")
    if bad is not None:
        raise SightlineError(f"The {what} is not valid text: character {bad + 1} is a lone surrogate "
                             "that JSON or a broken copy let through).", hint=hint or "Type it again as plain UTF-8 text.")
    if "\x00" in value:
        raise SightlineError(f"The {what} contains a NUL character (\\0).", hint=hint or "Remove it and try again.")
    if max_chars is not None and len(value) > max_chars:
        raise SightlineError(f"The {what} is {len(value)} characters long; the limit is {max_chars}.",
                             hint=hint or "Shorten it.")
    return value


def query_text(value: object, what: str = "search query", max_chars: int = 2000) -> str:
    """A search query or question: valid text, stripped of spaces at the ends (see `without_invisible`)."""
    value = text(value if value is not None else "", what, hint="Type a few words describing the moment.").strip()
    if len(value) > max_chars:
        raise SightlineError(f"The {what} is {len(value)} characters long; the limit is {max_chars}.",
                             hint="Shorten it to the words that matter.")
    return value


def without_invisible(value: str) -> str:
    """Zero-width spaces, byte-order marks and word joiners removed: "har\u200bbour" is "harbour"."""
    return value.translate(_INVISIBLE).strip()


def searchable(value: str) -> bool:
    """True when the text holds a letter or a digit of any script (punctuation, emoji, spaces: nothing to find)."""
    return any(unicodedata.category(ch)[0] in "LN" for ch in value)


def require_searchable(value: str, what: str = "search query") -> str:
    """`value` when it holds a letter or digit; else SightlineError: empty, or nothing to search for."""
    if not value.strip():
        raise SightlineError(f"The {what} is empty.", hint="Type a few words describing the moment.")
    if not searchable(value):
        raise SightlineError(f"Nothing to search for: the {what} {shown(value)} has no letters or digits.",
                             hint="Search with words: what is said, written on screen or shown.")
    return value


def path_text(value: object, what: str = "path") -> str:
    """A file or folder path as a user gave it: text, no NUL, at most MAX_PATH_CHARS, names at most 255 bytes."""
    try:
        value = text(value, what, hint="Give the path of a file or folder on this machine.")
    except SightlineError as err:
        if "UTF-8" not in err.message:
            raise
        raise SightlineError(err.message, hint="Sightline keeps paths as UTF-8 text: rename a file or folder whose "
                             "name is in another encoding (convmv does it), or give the path as plain text.") from None
    if len(value) > MAX_PATH_CHARS:
        raise SightlineError(f"The {what} is {len(value)} characters long; the limit is {MAX_PATH_CHARS}.",
                             hint="Check that the right text was pasted.")
    long = next((part for part in value.split("/") if len(part.encode("utf-8")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise SightlineError(f"The {what} has a name longer than {MAX_NAME_BYTES} bytes ({shown(long)}).",
                             hint="No file system here holds such a name; check the path.")
    return value


def id_number(value: object) -> int | None:
    """The integer of an id given as an int or as ASCII digits (at most MAX_ID_DIGITS); None otherwise.

    `str.isdigit` is true for '²' and '٣', which int() refuses or reads as 3: only 0-9 count here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 10**MAX_ID_DIGITS else None
    if isinstance(value, str):
        value = value.strip()
        if value and len(value) <= MAX_ID_DIGITS and value.isascii() and value.isdigit():
            return int(value)
    return None


def video_id(value: object, hint: str = "Pick a video of the library.") -> int:
    """A video id (int or ASCII digits); anything else is refused with `hint`."""
    number = id_number(value)
    if number is None:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise SightlineError("No video was given.", hint=hint)
        raise SightlineError(f"{shown(value)} is not a video id.", hint=hint)
    return number


def video_ref(value: object) -> int | str:
    """A video given by id, path or file name: the id as an int, else the stripped, checked text."""
    number = id_number(value)
    if number is not None:
        return number
    if isinstance(value, int) and not isinstance(value, bool):
        raise SightlineError(f"{shown(value)} is not a video id.", hint="Video ids are shown by `sightline status`.")
    ref = text(value, "video", hint="Give a video's id, path or file name.").strip()
    if not ref:
        raise SightlineError("No video was given.", hint="Give a video's id, path or file name.")
    if len(ref) > MAX_REF_CHARS:
        raise SightlineError(f"The video given is {len(ref)} characters long; no id, path or file name is longer "
                             f"than {MAX_REF_CHARS}.", hint="Give a video's id, path or file name.")
    return ref


def modalities(values: object, known: Iterable[str]) -> list[str] | None:
    """Modalities to filter by: None or empty -> None; one name or a list of names, each one of `known`."""
    known = list(known)
    if values is None or values == "" or values == []:
        return None
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in values):
        raise SightlineError("Modalities must be a list of names.", hint=f"Use some of {', '.join(known)}.")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise SightlineError(f"Unknown modality {', '.join(shown(v) for v in unknown[:4])}.",
                             hint=f"Use one of {', '.join(known)}.")
    return list(dict.fromkeys(values))


def count(value: object, what: str, low: int, high: int) -> int:
    """A whole number in [low, high] (k of a search, a port); `what` starts the message ("k", "The port")."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # int, numpy integers; not floats or strings
    except TypeError:
        raise SightlineError(f"{what} must be a whole number, not {shown(value)}.",
                             hint=f"Use a number from {low} to {high}.") from None
    if not low <= value <= high:
        raise SightlineError(f"{what} must be from {low} to {high}, got {value}.",
                             hint=f"Use a number from {low} to {high}.")
    return value


# --- how much of a query the text embedder knows ---------------------------------------------------------------

def known_share(query: str, tokenizer) -> float:
    """Share of the query's letters and digits that the embedder's tokenizer knows as pieces of two or more
    characters (or as a whole one-piece word: "a", "42"), in [0, 1].

    A word the tokenizer maps to its unknown token (MiniLM: Thai, Amharic, Georgian, emoji) or can only spell
    one character per piece (MiniLM: Cyrillic, Greek, Arabic, Devanagari, Hangul, kana) is text the model never
    learned, and its vector says nothing: measured, such queries land at cosine 0.15-0.30 from short English
    lines like "No!", while real paraphrases land at 0.3-0.6, so no similarity floor can tell them apart."""
    unk = getattr(tokenizer, "unk_token", None)
    total = known = 0
    for word in query.split():
        letters = sum(unicodedata.category(ch)[0] in "LNM" for ch in word)
        if not letters:
            continue
        total += letters
        pieces = [p for p in tokenizer.tokenize(word) if p == unk or searchable(p)]
        if not pieces or (unk is not None and unk in pieces):
            continue
        if len(pieces) == 1:
            known += letters
            continue
        spelled = [p.replace("##", "").replace("\u2581", "").replace("\u0120", "") for p in pieces]
        known += min(letters, sum(len(p) for p in spelled if len(p) >= 2))
    return known / total if total else 0.0


def tokenizer_of(embed) -> object | None:
    """The Hugging Face tokenizer behind a text embedder (`.tokenizer`, or `.model.tokenizer` for a
    sentence-transformers model), when it has one; a plain function has none."""
    tok = getattr(embed, "tokenizer", None) or getattr(getattr(embed, "model", None), "tokenizer", None)
    return tok if callable(getattr(tok, "tokenize", None)) else None
