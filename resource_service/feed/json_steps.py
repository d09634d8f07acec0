"""JSON text parsed in steps: a bounded number of values per step, so a big document never holds the loop.

A snapshot of 100k revocations is a few arrays of 100k values each; json.loads would parse it in one go. This
parser walks the containers itself and hands each scalar to the json module's C scanner, and it pauses (a
generator yield) after every `step` values, so the caller can await between steps. The result equals
json.loads' for any valid document, and invalid text raises json.JSONDecodeError as json.loads does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["parse_in_steps"]

# The json module's C scanner and string parser (typeshed does not list them): one value, one string.
_decoder = json.JSONDecoder()
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]
scanstring: Callable[[str, int], tuple[str, int]] = _decoder.parse_string  # type: ignore[attr-defined]
_SPACE = re.compile(r"[ \t\n\r]*")
_SPACES = " \t\n\r"

Steps = Generator[None, None, Any]


def parse_in_steps(text: str, step: int) -> Steps:
    """Parse `text`, yielding after every `step` values; the generator's return value is the document."""
    return _Parser(step).document(text)


def _skip(text: str, i: int) -> int:
    if i < len(text) and text[i] in _SPACES:
        return _SPACE.match(text, i).end()  # type: ignore[union-attr]  # the pattern matches anywhere
    return i


# A run of plain scalars in an array, each followed by a comma: strings without escapes or control characters,
# and number-like tokens. Such a run is cut out and given to json.loads whole: the columns of a snapshot are
# long runs of these. The loose number pattern admits no valid text that json.loads would read differently,
# and what it admits that is not a number json.loads refuses, as it would in place.
_RUN = r'(?:(?:"[^"\\\x00-\x1f]*"|-?[0-9][0-9.eE+\-]*)[ \t\n\r]*,[ \t\n\r]*){1,%d}'


class _Parser:
    __slots__ = ("_left", "_run", "_step")

    def __init__(self, step: int) -> None:
        if step < 1:
            raise ValueError("step must be at least 1")
        self._step = step
        self._left = step
        self._run = re.compile(_RUN % step)

    def document(self, text: str) -> Steps:
        value, end = yield from self._value(text, _skip(text, 0))
        end = _skip(text, end)
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
        return value

    def _value(self, text: str, i: int) -> Generator[None, None, tuple[Any, int]]:
        char = text[i : i + 1]
        if char == "[":
            return (yield from self._array(text, _skip(text, i + 1)))
        if char == "{":
            return (yield from self._object(text, _skip(text, i + 1)))
        return _scalar(text, i)

    def _counted(self) -> bool:
        self._left -= 1
        if self._left > 0:
            return False
        self._left = self._step
        return True

    def _array(self, text: str, i: int) -> Generator[None, None, tuple[list[Any], int]]:
        out: list[Any] = []
        if text[i : i + 1] == "]":
            return out, i + 1
        while True:
            run = self._run.match(text, i)
            if run is not None:
                end = run.end()
                values = json.loads("[" + text[i : text.rindex(",", i, end)] + "]")
                out.extend(values)
                i = end
                self._left -= len(values)
                if self._left <= 0:
                    self._left = self._step
                    yield
                continue
            if text[i : i + 1] in ("[", "{"):
                value, i = yield from self._value(text, i)
            else:
                value, i = _scalar(text, i)  # the hot path: no generator frame per number or string
            out.append(value)
            if self._counted():
                yield
            i = _skip(text, i)
            char = text[i : i + 1]
            if char == ",":
                i = _skip(text, i + 1)
            elif char == "]":
                return out, i + 1
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)

    def _object(self, text: str, i: int) -> Generator[None, None, tuple[dict[str, Any], int]]:
        out: dict[str, Any] = {}
        if text[i : i + 1] == "}":
            return out, i + 1
        while True:
            if text[i : i + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            key, i = scanstring(text, i + 1)
            i = _skip(text, i)
            if text[i : i + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            out[key], i = yield from self._value(text, _skip(text, i + 1))
            if self._counted():
                yield
            i = _skip(text, i)
            char = text[i : i + 1]
            if char == ",":
                i = _skip(text, i + 1)
            elif char == "}":
                return out, i + 1
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)


def _scalar(text: str, i: int) -> tuple[Any, int]:
    try:
        found: tuple[Any, int] = _scan_once(text, i)
    except StopIteration as exc:
        # The scanner's way of saying "no value here"; inside a generator it must not escape as such.
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    return found
