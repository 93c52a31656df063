"""Outside text made safe to show on one line (pure, no I/O).

Match ids, team names, run ids typed by the operator and failure reasons written
by workers come from outside retro. Shown raw, a newline, a carriage return, an
ANSI escape or U+2028 in them could forge a log line or a row of ``retro status``.
:func:`escape` writes every non-printable character the way Python's ``repr`` does
(``\\n``, ``\\x1b``, ``\\u2028``), so it stays visible; :func:`json_safe` does the same
for the characters a JSON encoder leaves raw (C1 controls, U+2028/2029 …).
"""

from __future__ import annotations


def _shown(char: str) -> str:
    """One character as ``repr`` writes it inside a string literal (``\\n``, ``\\x85``)."""
    return repr(char)[1:-1]


def escape(text: str) -> str:
    """``text`` with every non-printable character (``str.isprintable``: C0/C1 controls,
    DEL, format characters, separators other than the space) escaped visibly as
    ``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u2028`` …; printable text is unchanged.
    The result holds no line break of any kind."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _shown(c) for c in text)


def json_safe(encoded: str) -> str:
    """JSON text (``json.dumps(…, ensure_ascii=False)``) with the non-printable
    characters the encoder left raw (DEL, C1 controls, U+2028/2029, format and
    unpaired surrogate characters; the encoder escapes only C0) written as ``\\uXXXX``
    escapes (a surrogate pair above U+FFFF). Such characters only occur inside JSON
    strings, so the document means the same and stays on its lines."""
    if encoded.isascii() and "\x7f" not in encoded:
        return encoded
    return "".join(
        _json_escape(c) if ord(c) >= 0x7F and not c.isprintable() else c for c in encoded
    )


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
