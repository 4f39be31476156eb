"""Command-line option values (`--set KEY=VALUE` strings) as the types of the dataclass fields they set:
one conversion for the model configs and the extractors' options."""

from __future__ import annotations

import json

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class OptionTypeError(ValueError):
    """A string that is not of its field's type; `expected` says what it should be ("an integer")."""

    def __init__(self, expected: str, numeric: bool):
        super().__init__(expected)
        self.expected, self.numeric = expected, numeric


def typed_value(annotation, value):
    """`value` as `annotation` (a field's type, a string under `from __future__ import annotations`):
    `Optional[int]` -> int, or None for "none"/"null"; bool from true/false words; lists and dicts as
    JSON. Values that are not strings pass unchanged."""
    if not isinstance(value, str):
        return value
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kind = kind.removeprefix("Optional[").removesuffix("]").removesuffix(" | None")
    if kind == "str":
        return value
    if kind == "bool":
        if value.lower() not in TRUE_WORDS + FALSE_WORDS:
            raise OptionTypeError("a boolean (true or false)", numeric=False)
        return value.lower() in TRUE_WORDS
    if value.lower() in ("none", "null"):
        return None
    if kind in ("int", "float"):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            raise OptionTypeError("an integer" if kind == "int" else "a number", numeric=True) from None
    try:
        return json.loads(value)  # dicts, lists
    except json.JSONDecodeError:
        return value
