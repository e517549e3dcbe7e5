"""Texts made below the web layer that a person reads: English, plus what the catalog needs.

The engine, the importer and the CLI stay free of Flask-Babel; a page translates a Text with
web.i18n.translate (its catalog id and values), the CLI prints it as the English it is.
"""

from __future__ import annotations


class Text(str):
    """An English text that remembers its catalog id and the values filled into it."""

    msgid: str
    values: dict[str, object]

    def __new__(cls, msgid: str, values: dict[str, object]) -> Text:
        text = super().__new__(cls, msgid % values if values else msgid)
        text.msgid, text.values = msgid, values
        return text

    def __reduce__(self):  # pickles (and copies) keep the catalog id
        return Text, (self.msgid, self.values)


def N_(msgid: str, **values: object) -> Text:  # noqa: N802 - gettext's name for "extract, translate later"
    """A catalog text with %(name)s values filled in, translated later where it is shown."""
    return Text(msgid, values)
