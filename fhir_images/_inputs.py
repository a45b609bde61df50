"""What every input model and input file obeys: the rules of the input gate for data.

* **Files** (case, context and consent files): regular files only, at most
  :data:`MAX_FILE_BYTES`, UTF-8; YAML without anchors, aliases or tags, no duplicate keys,
  nesting at most :data:`MAX_DEPTH` deep; JSON without duplicate keys. Nothing is expanded
  before it is checked.
* **Models** (:class:`InputModel`): every value must already have the type its field takes
  (text for text, ``true``/``false`` for flags, a date for a date: ``birth_date: 0`` is not
  the first of January 1970); text has no control characters and respects FHIR's length
  limits; references are ``Type/id`` by FHIR's id rules.
* **Errors** are :class:`~fhir_images.InvalidContext`, naming the field and the rule broken,
  never the value (which may be a name or a diagnosis).
"""

from __future__ import annotations

import json
import re
import types
import typing
import unicodedata
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from ._exceptions import BadInput, InvalidContext

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 20
#: FHIR: a string SHALL NOT exceed 1 MB; fhir-images keeps each kind of text far shorter
SHORT_TEXT = 1_024
LONG_TEXT = 65_536

_ID = r"[A-Za-z0-9\-.]{1,64}"
_REFERENCE = re.compile(rf"^(?P<type>[A-Z][A-Za-z]{{1,63}})/(?P<id>{_ID})$")


def reference_parts(value: str) -> tuple[str, str] | None:
    """(type, id) of a relative reference ``Type/id`` valid by FHIR's id rules, else None.

    An id made only of dots, or holding ``..``, is refused (it would climb a path).
    """
    m = _REFERENCE.match(value)
    if not m or ".." in m.group("id") or set(m.group("id")) == {"."}:
        return None
    return m.group("type"), m.group("id")


def reference(*allowed: str) -> AfterValidator:
    """A validator: a relative reference to one of ``allowed`` types (any type when empty)."""

    def check(value: str) -> str:
        parts = reference_parts(value)
        if parts is None or (allowed and parts[0] not in allowed):
            kinds = " or ".join(allowed) or "a resource"
            raise ValueError(
                f"must be a relative reference to {kinds} (Type/id, id of letters, digits, "
                "'-' and '.', at most 64)"
            )
        return value

    return AfterValidator(check)


def _no_controls(multiline: bool, limit: int) -> AfterValidator:
    allowed = {"\t", "\n", "\r"} if multiline else set()

    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"is longer than {limit} characters")
        for ch in value:
            if ch in allowed:
                continue
            if unicodedata.category(ch) in ("Cc", "Cs") or ch in ("\u2028", "\u2029"):
                raise ValueError("holds a control character")
        return value

    return AfterValidator(check)


#: A single line of text (a name, a code, a title): no control characters, 1,024 at most
Line = Annotated[str, _no_controls(False, SHORT_TEXT)]
#: Free text (a purpose, a discussion): tabs and line breaks allowed, 65,536 at most
Text = Annotated[str, _no_controls(True, LONG_TEXT)]


# ------------------------------------------------------------------------- raw types


def _kinds(annotation: Any) -> set[str]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    if origin is typing.Literal:
        return {"str"}
    if origin in (list, tuple, frozenset, set):
        return {"list"}
    if annotation is type(None):
        return {"none"}
    if annotation is bool:
        return {"bool"}
    if annotation is datetime:
        return {"datetime"}
    if annotation is date:
        return {"date"}
    if annotation is str:
        return {"str"}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"str"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"model"}
    return {"any"}


def _fits(value: Any, kinds: set[str]) -> bool:
    if "any" in kinds:
        return True
    if value is None:
        return "none" in kinds
    checks = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "date": isinstance(value, str)
        or (isinstance(value, date) and not isinstance(value, datetime)),
        "datetime": isinstance(value, (str, date)),
        "model": isinstance(value, (dict, BaseModel)),
        "list": isinstance(value, (list, tuple, set, frozenset)),
    }
    return any(checks.get(k, False) for k in kinds)


_KIND_TEXT = {
    "str": "text",
    "bool": "true or false",
    "date": "a date (YYYY-MM-DD)",
    "datetime": "a date and time (ISO 8601)",
    "model": "a mapping of fields",
    "list": "a list",
}


def _rule(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field this takes"
    if kind == "value_error":
        return str(err.get("msg", "")).removeprefix("Value error, ")
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    if kind.startswith("date") or kind.startswith("datetime"):
        return "must be a valid date" + (" and time (ISO 8601)" if "datetime" in kind else "")
    return str(err.get("msg", "is not valid"))


def _safe_name(part: Any) -> str:
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}|\d{1,6}", text) else "(a key)"


def validation_message(what: str, exc: ValidationError) -> str:
    """``invalid {what}: field: rule; ...`` built from the errors, never their input."""
    parts = []
    for err in exc.errors():
        loc = ".".join(_safe_name(p) for p in err["loc"])
        parts.append(f"{loc}: {_rule(dict(err))}" if loc else _rule(dict(err)))
    return f"invalid {what}: " + "; ".join(parts[:10])


class InputModel(BaseModel):
    """A model of input from outside: raw types checked first, errors as InvalidContext."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    #: how the model is named in error messages ("context", "consent", ...)
    input_name: ClassVar[str] = "input"

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidContext(validation_message(self.input_name, exc)) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> typing.Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise InvalidContext(validation_message(cls.input_name, exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _raw_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            if isinstance(data, BaseModel):
                return data
            raise ValueError("must be a mapping of fields")
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is None:
                continue  # extra="forbid" names it
            kinds = _kinds(field.annotation)
            if not _fits(value, kinds):
                wanted = " or ".join(
                    sorted({_KIND_TEXT[k] for k in kinds if k in _KIND_TEXT}) or {"valid"}
                )
                raise ValueError(f"{_safe_name(name)} must be {wanted}")
        return data


# ------------------------------------------------------------------------------ files


class _Refused(yaml.YAMLError):
    def __init__(self, rule: str, mark: Any = None) -> None:
        super().__init__(rule)
        self.rule = rule
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases, tags and duplicate keys, and deep nesting,
    as each node is composed: nothing is expanded first."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused("anchors and aliases (& and *) are not allowed", event.start_mark)
        if getattr(event, "tag", None) not in (None, "!"):  # only explicit tags are set here
            raise _Refused("explicit tags (!...) are not allowed", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key == "<<":
                raise _Refused("merge keys (<<) are not allowed", key_node.start_mark)
            if key in seen:
                raise _Refused(f"the key {_safe_name(key)} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the key {_safe_name(key)} appears twice")
        out[key] = value
    return out


def load_structured(path: Path, what: str = "file") -> Any:
    """Read a JSON or YAML file through the input gate. Raises InvalidContext naming ``what``
    and the rule broken (with a line and column), never the file's content or path."""
    from ._intake import open_regular

    try:
        with open_regular(Path(path), what) as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except BadInput as exc:
        raise InvalidContext(str(exc)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidContext(f"the {what} is over {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidContext(f"the {what} is not UTF-8 text") from None
    if "\x00" in text:
        raise InvalidContext(f"the {what} holds a NUL character")
    is_json = Path(path).suffix.lower() == ".json"
    try:
        if is_json:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        loader = _StrictLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:
        where = f" (line {exc.mark.line + 1}, column {exc.mark.column + 1})" if exc.mark else ""
        raise InvalidContext(f"the {what}: {exc.rule}{where}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidContext(f"the {what} is not valid YAML{where}") from None
    except yaml.YAMLError:
        raise InvalidContext(f"the {what} is not valid YAML") from None
    except json.JSONDecodeError as exc:
        raise InvalidContext(
            f"the {what} is not valid JSON at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidContext(f"the {what} is nested too deeply") from None
