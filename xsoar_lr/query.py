"""
XSOAR indicator queries, translated to parameterised SQL for the indicator
store.

The syntax is XSOAR's Lucene-like one: C{field:value} terms, C{AND}, C{OR},
C{NOT} (in any case) and C{-} for negation, parentheses, quoted values,
C{*} and C{?} wildcards, comparisons (C{score:>=2}) and ranges
(C{lastSeen:[2026-01-01 TO 2026-02-01]}). Terms next to each other without
an operator must all match, as in XSOAR. An empty query matches every
indicator.

The text is parsed with luqum; the tree is then turned into an SQL condition
whose every value is a bound parameter, so no text of the query ever becomes
SQL. The condition refers to the columns of the store's C{indicators} table.
"""

from __future__ import annotations

import abc
import difflib
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from luqum import parser as luqum_parser  # type: ignore[import-untyped]
from luqum import tree  # type: ignore[import-untyped]
from luqum.exceptions import (  # type: ignore[import-untyped]
    IllegalCharacterError,
    ParseError,
)
from luqum.head_tail import TokenValue  # type: ignore[import-untyped]

from xsoar_lr.indicators import (
    IndicatorType,
    Score,
    detect_type,
    normalise,
    parse_score,
)

__all__ = [
    "CompiledQuery",
    "QueryError",
    "compile_query",
    "from_time_stamp",
    "time_stamp",
]

# PLY keeps parser state on its parser object, so parses take turns; a parse
# takes microseconds.
_PARSE_LOCK = threading.Lock()

#: Names a custom field explicitly, for names close to a built-in field.
_CUSTOM_PREFIX = "customfields."
_CUSTOM_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_RELATIVE_RE = re.compile(
    r"^(\d+)\s*(second|minute|hour|day|week)s?\s+ago$", re.IGNORECASE
)
_UNITS = {
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


class QueryError(ValueError):
    """
    An indicator query is not valid.

    C{str()} gives the reason, the position and the query with a caret
    under the position, on three lines.

    :ivar query: the query as given.
    :ivar position: the 0-based character offset of the problem.
    :ivar reason: a sentence saying what is wrong or what was expected.
    """

    def __init__(self, query: str, position: int, reason: str) -> None:
        self.query = query
        self.position = position
        self.reason = reason
        super().__init__(
            f"Invalid indicator query at position {position}: {reason}\n"
            f"  {query}\n  {' ' * position}^"
        )


@attrs.frozen
class CompiledQuery:
    """
    A query as an SQL condition.

    :ivar where: an SQL boolean expression over the C{indicators} table.
    :ivar params: the values bound to its C{?} placeholders, in order.
    """

    where: str
    params: tuple[Any, ...]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_stamp(moment: datetime) -> int:
    """
    Return the stored form of a moment: microseconds since 1970-01-01 UTC.
    A naive moment is taken as UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_time_stamp(stamp: int) -> datetime:
    """
    Return the moment (in UTC) that L{time_stamp} turned into C{stamp}.
    """
    return _EPOCH + timedelta(microseconds=stamp)


def compile_query(query: str, *, now: datetime | None = None) -> CompiledQuery:
    """
    Translate an XSOAR indicator query into an SQL condition.

    :param query: the query; empty or blank means every indicator.
    :param now: the moment that C{expirationStatus} and relative dates
        (C{"7 days ago"}) are measured from; the current time by default.
    :raises QueryError: when the query is not valid.
    """
    if not query.strip():
        return CompiledQuery("1", ())
    moment = now if now is not None else datetime.now(UTC)
    depth = _nesting(query)
    if depth > MAX_NESTING:
        raise QueryError(
            query,
            0,
            f"the query nests parentheses {depth} deep; at most {MAX_NESTING} "
            "levels are accepted.",
        )
    try:
        node = _parse(query)
        terms = _count_terms(node)
        if terms > MAX_TERMS:
            raise QueryError(
                query,
                0,
                f"the query has {terms} terms; at most {MAX_TERMS} are accepted "
                "(SQLite cannot evaluate longer conditions).",
            )
        translator = _Translator(query, moment)
        where = translator.translate(node, None)
    except RecursionError:
        # Very long chains of AND/OR also nest deeply inside the parser.
        raise QueryError(
            query, 0, "the query is too complex; split it into smaller queries."
        ) from None
    return CompiledQuery(where, tuple(translator.params))


#: The deepest nesting of parentheses a query may have.
MAX_NESTING = 50

#: The most terms (field:value and bare values) a query may have.
MAX_TERMS = 400


def _count_terms(node: tree.Item) -> int:
    """
    How many leaves the parsed query has.
    """
    count = 0
    stack = [node]
    while stack:
        item = stack.pop()
        children = list(item.children)
        if isinstance(item, (tree.SearchField, tree.Word, tree.Phrase)) or not children:
            count += 1
        else:
            stack.extend(children)
    return count


def _nesting(query: str) -> int:
    """
    The deepest nesting of parentheses outside quoted values.
    """
    depth = deepest = 0
    quoted = False
    escaped = False
    for char in query:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif not quoted and char == ")":
            depth -= 1
    return deepest


# Parsing


_OPERATOR_WORDS = {"and": "AND_OP", "or": "OR_OP", "not": "NOT"}
_DESCRIPTIONS = {
    "COLUMN": "':'",
    "LPAREN": "'('",
    "RPAREN": "')'",
    "LBRACKET": "'[' or '{'",
    "RBRACKET": "']' or '}'",
    "AND_OP": "AND",
    "OR_OP": "OR",
    "NOT": "NOT",
    "TO": "TO",
    "MINUS": "'-'",
    "PLUS": "'+'",
    "GREATERTHAN": "'>'",
    "LESSTHAN": "'<'",
}


def _lex(query: str) -> list[Any]:
    lexer = luqum_parser.lexer.clone()
    lexer.input(query)
    tokens: list[Any] = []
    while True:
        try:
            token = lexer.token()
        except IllegalCharacterError:
            position = lexer.lexpos
            if query[position] == '"':
                raise QueryError(
                    query,
                    position,
                    "this quoted value has no closing '\"'; expected a '\"' "
                    "before the end of the query.",
                ) from None
            raise QueryError(
                query,
                position,
                f"the character {query[position]!r} cannot be used here; put "
                "the value in double quotes or escape it with '\\'.",
            ) from None
        if token is None:
            return tokens
        tokens.append(token)


def _mark_lowercase_operators(tokens: list[Any]) -> None:
    """
    Make C{and}, C{or} and C{not} written in lower or mixed case operators,
    as XSOAR does, unless they are a field name or a field's value.
    """
    for index, token in enumerate(tokens):
        if token.type != "TERM":
            continue
        word = token.value.value
        kind = _OPERATOR_WORDS.get(word.lower())
        if kind is None or word.isupper():
            continue
        before = tokens[index - 1].type if index else None
        after = tokens[index + 1].type if index + 1 < len(tokens) else None
        if before in ("COLUMN", "GREATERTHAN", "LESSTHAN") or after == "COLUMN":
            continue
        replacement = TokenValue(word.upper())
        for name in ("pos", "size", "head", "tail"):
            setattr(replacement, name, getattr(token.value, name))
        token.type = kind
        token.value = replacement


def _parse(query: str) -> tree.Item:
    tokens = _lex(query)
    if not tokens:
        return tree.Word("*")
    _mark_lowercase_operators(tokens)
    fed: list[int] = []

    def next_token() -> Any:
        index = len(fed)
        fed.append(index)
        return tokens[index] if index < len(tokens) else None

    lexer = luqum_parser.lexer.clone()
    try:
        with _PARSE_LOCK:
            node: tree.Item = luqum_parser.parser.parse(
                None, lexer=lexer, tokenfunc=next_token
            )
    except ParseError:
        raise _syntax_error(query, tokens, len(fed) - 1) from None
    return node


def _syntax_error(query: str, tokens: Sequence[Any], index: int) -> QueryError:
    """
    Explain a syntax error at C{tokens[index]} (C{index == len(tokens)} for
    the end of the query) from the token before it.
    """
    at_end = index >= len(tokens)
    position = len(query.rstrip()) if at_end else tokens[index].lexpos
    found = "the end of the query" if at_end else _describe(tokens[index])
    previous = tokens[index - 1] if 0 < index <= len(tokens) else None

    opened: list[int] = []
    in_range = False
    for token in tokens[:index]:
        if token.type == "LPAREN":
            opened.append(token.lexpos)
        elif token.type == "RPAREN" and opened:
            opened.pop()
        elif token.type == "LBRACKET":
            in_range = True
        elif token.type == "RBRACKET":
            in_range = False

    if in_range:
        expected = "a range written as [LOW TO HIGH]"
    elif previous is None:
        expected = "a search term such as type:IP at the start of the query"
    elif previous.type == "COLUMN":
        field = tokens[index - 2].value if index >= 2 else ""
        expected = (
            f"a value after '{field}:' (put a value that contains ':', such as "
            "an IPv6 address or a URL, in double quotes)"
        )
    elif previous.type in ("AND_OP", "OR_OP", "NOT", "MINUS", "PLUS"):
        expected = f"a search term after {_describe(previous)}"
    elif previous.type in ("GREATERTHAN", "LESSTHAN"):
        expected = f"a value to compare with after {_describe(previous)}"
    elif previous.type == "LPAREN":
        expected = "a search term after '('"
    elif not at_end and tokens[index].type == "RPAREN" and not opened:
        expected = "a search term or an operator; this ')' closes no '('"
    elif at_end and opened:
        expected = f"')' to close the '(' at position {opened[-1]}"
    else:
        expected = "a search term or an operator (AND, OR, NOT)"
    return QueryError(query, position, f"expected {expected}, found {found}.")


def _describe(token: Any) -> str:
    if token.type in _DESCRIPTIONS:
        return _DESCRIPTIONS[token.type]
    return repr(str(token.value))


# Translation


def _unquote_phrase(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)


@attrs.frozen
class _Term:
    """
    A value from the query: its text with escapes resolved, whether it holds
    wildcards (and the LIKE pattern for them), and its position.
    """

    text: str
    like: str | None
    position: int

    @property
    def is_any(self) -> bool:
        return self.like == "%"


def _term(node: tree.Item) -> _Term:
    position = node.pos or 0
    if isinstance(node, tree.Phrase):
        return _Term(_unquote_phrase(node.value), None, position)
    raw = node.value
    text: list[str] = []
    like: list[str] = []
    wild = False
    index = 0
    while index < len(raw):
        char = raw[index]
        if char == "\\" and index + 1 < len(raw):
            index += 1
            char = raw[index]
            text.append(char)
            like.append("\\" + char if char in "%_\\" else char)
        elif char in "*?":
            wild = True
            text.append(char)
            like.append("%" if char == "*" else "_")
        else:
            text.append(char)
            like.append("\\" + char if char in "%_\\" else char)
        index += 1
    return _Term("".join(text), "".join(like) if wild else None, position)


_Comparison = tuple[str, _Term]  # (SQL operator, bound)


class _Translator:
    """
    Turns a luqum tree into SQL, collecting the bound parameters.
    """

    def __init__(self, query: str, now: datetime) -> None:
        self.query = query
        self.now = now
        self.params: list[Any] = []

    def error(self, node: tree.Item | _Term | None, reason: str) -> QueryError:
        position = 0
        if isinstance(node, _Term):
            position = node.position
        elif node is not None and node.pos is not None:
            position = node.pos
        return QueryError(self.query, position, reason)

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def translate(self, node: tree.Item, field: _Field | None) -> str:
        if isinstance(node, (tree.AndOperation, tree.UnknownOperation)):
            return self.join(node, field, " AND ")
        if isinstance(node, tree.OrOperation):
            return self.join(node, field, " OR ")
        if isinstance(node, (tree.Not, tree.Prohibit)):
            return f"NOT ({self.translate(node.a, field)})"
        if isinstance(node, tree.Plus):
            return self.translate(node.a, field)
        if isinstance(node, (tree.Group, tree.FieldGroup)):
            return self.translate(node.expr, field)
        if isinstance(node, tree.SearchField):
            if field is not None:
                raise self.error(
                    node,
                    f"the field '{node.name}' is inside the value of "
                    f"'{field.name}'; close the parentheses of '{field.name}' "
                    "first.",
                )
            if isinstance(node.expr, tree.SearchField):
                raise self.error(
                    node.expr,
                    f"the value of '{node.name}' contains ':'; put it in double "
                    "quotes or escape the ':' with '\\'.",
                )
            return self.translate(node.expr, self.field(node))
        target = field if field is not None else _VALUE_FIELD
        if isinstance(node, (tree.Word, tree.Phrase)):
            return target.match(self, _term(node))
        if isinstance(node, tree.Range):
            return self.range(node, target)
        if isinstance(node, (tree.From, tree.To)):
            operator = {
                (tree.From, True): ">=",
                (tree.From, False): ">",
                (tree.To, True): "<=",
                (tree.To, False): "<",
            }[(type(node), bool(node.include))]
            return target.compare(self, [(operator, self.bound(node.a))])
        if isinstance(node, tree.Regex):
            reason = "regular expressions (/.../) are not supported; use * and ?"
        elif isinstance(node, (tree.Fuzzy, tree.Proximity)):
            reason = "fuzzy and proximity searches (~) are not supported"
        elif isinstance(node, tree.Boost):
            reason = "boosts (^) are not supported; indicator queries do not rank"
        else:
            reason = f"'{node}' is not supported in indicator queries"
        raise self.error(node, reason + ".")

    def join(self, node: tree.Item, field: _Field | None, operator: str) -> str:
        parts = [self.translate(child, field) for child in node.children]
        return "(" + operator.join(f"({part})" for part in parts) + ")"

    def bound(self, node: tree.Item) -> _Term:
        if isinstance(node, (tree.Word, tree.Phrase)):
            return _term(node)
        raise self.error(node, f"expected a single value here, not '{node}'.")

    def range(self, node: tree.Range, field: _Field) -> str:
        comparisons: list[_Comparison] = []
        low, high = self.bound(node.low), self.bound(node.high)
        if not low.is_any:
            comparisons.append((">=" if node.include_low else ">", low))
        if not high.is_any:
            comparisons.append(("<=" if node.include_high else "<", high))
        if not comparisons:
            return field.match(self, low)
        return field.compare(self, comparisons)

    def field(self, node: tree.SearchField) -> _Field:
        name = node.name
        if name.lower().startswith(_CUSTOM_PREFIX):
            custom = name[len(_CUSTOM_PREFIX) :]
            if not _CUSTOM_FIELD_RE.match(custom):
                raise self.error(
                    node,
                    f"'{custom}' is not a custom field name; use letters, "
                    "digits, '_' and '-'.",
                )
            return _CustomField(custom)
        found = _FIELDS.get(name.lower())
        if found is not None:
            return found
        close = difflib.get_close_matches(name.lower(), _FIELDS, n=1, cutoff=0.75)
        if close:
            raise self.error(
                node,
                f"there is no field '{name}'; did you mean "
                f"'{_FIELDS[close[0]].name}'? (Write customFields.{name} for a "
                "custom field of that name.)",
            )
        if not _CUSTOM_FIELD_RE.match(name):
            raise self.error(
                node,
                f"'{name}' is not a field name; use letters, digits, '_' and '-'.",
            )
        return _CustomField(name)


class _Field(abc.ABC):
    """
    How one field of the query syntax is searched.
    """

    name = ""

    @abc.abstractmethod
    def match(self, t: _Translator, term: _Term) -> str:
        """
        The SQL condition for C{term} on this field.
        """

    def compare(self, t: _Translator, comparisons: list[_Comparison]) -> str:
        raise t.error(
            comparisons[0][1],
            f"the field '{self.name}' cannot be compared with <, >, or ranges.",
        )


# The store keeps a value only where it differs from its key.
_VALUE = "coalesce(value, key)"


class _ValueField(_Field):
    name = "value"

    def match(self, t: _Translator, term: _Term) -> str:
        if term.is_any:
            return "1"
        if term.like is not None:
            return f"{_VALUE} LIKE {t.bind(term.like)} ESCAPE '\\'"
        try:
            key = normalise(term.text, detect_type(term.text))
        except ValueError:
            return f"{_VALUE} = {t.bind(term.text)} COLLATE NOCASE"
        return f"key = {t.bind(key)}"

    def compare(self, t: _Translator, comparisons: list[_Comparison]) -> str:
        return " AND ".join(
            f"{_VALUE} {operator} {t.bind(term.text)}" for operator, term in comparisons
        )


class _TypeField(_Field):
    name = "type"

    def match(self, t: _Translator, term: _Term) -> str:
        if term.is_any:
            return "1"
        if term.like is not None:
            return f"type LIKE {t.bind(term.like)} ESCAPE '\\'"
        for member in IndicatorType:
            if member.value.lower() == term.text.lower():
                return f"type = {t.bind(member.value)}"
        names = ", ".join(member.value for member in IndicatorType)
        raise t.error(
            term, f"'{term.text}' is not an indicator type; expected one of {names}."
        )


class _ScoreField(_Field):
    name = "score"

    def score(self, t: _Translator, term: _Term) -> Score:
        try:
            return parse_score(term.text)
        except ValueError:
            raise t.error(
                term,
                f"'{term.text}' is not a score; expected 0 to 3 or a verdict "
                "(Unknown, Benign, Suspicious, Malicious).",
            ) from None

    def match(self, t: _Translator, term: _Term) -> str:
        if term.is_any:
            return "1"
        return f"score = {t.bind(int(self.score(t, term)))}"

    def compare(self, t: _Translator, comparisons: list[_Comparison]) -> str:
        return " AND ".join(
            f"score {operator} {t.bind(int(self.score(t, term)))}"
            for operator, term in comparisons
        )


@attrs.frozen
class _SetField(_Field):
    """
    A field with several values per indicator, kept in a table of its own.
    """

    name: str
    table: str
    column: str

    def match(self, t: _Translator, term: _Term) -> str:
        if term.is_any:
            return f"id IN (SELECT indicator_id FROM {self.table})"
        if term.like is not None:
            condition = f"{self.column} LIKE {t.bind(term.like)} ESCAPE '\\'"
        else:
            condition = f"{self.column} = {t.bind(term.text)}"
        return f"id IN (SELECT indicator_id FROM {self.table} WHERE {condition})"


@attrs.frozen
class _DateField(_Field):
    name: str
    column: str

    def moment(self, t: _Translator, term: _Term) -> tuple[datetime, bool]:
        """
        Read a date; the flag says the value was a whole day.
        """
        text = term.text.strip()
        if text.lower() == "now":
            return t.now, False
        relative = _RELATIVE_RE.match(text)
        if relative is not None:
            amount = int(relative.group(1)) * _UNITS[relative.group(2).lower()]
            return t.now - amount, False
        try:
            # Python 3.10 reads no "Z" suffix.
            zoned = text.replace("Z", "+00:00")
            moment = datetime.fromisoformat(zoned)
        except ValueError:
            raise t.error(
                term,
                f"'{term.text}' is not a date; expected an ISO 8601 date such "
                'as 2026-01-31 or "2026-01-31T08:00:00Z", "now", or '
                '"7 days ago".',
            ) from None
        return moment, len(text) == 10

    def match(self, t: _Translator, term: _Term) -> str:
        if term.is_any:
            return f"{self.column} IS NOT NULL"
        moment, whole_day = self.moment(t, term)
        if not whole_day:
            return f"{self.column} = {t.bind(time_stamp(moment))}"
        start = time_stamp(moment)
        end = time_stamp(moment + timedelta(days=1))
        return f"{self.column} >= {t.bind(start)} AND {self.column} < {t.bind(end)}"

    def compare(self, t: _Translator, comparisons: list[_Comparison]) -> str:
        parts = []
        for operator, term in comparisons:
            moment, whole_day = self.moment(t, term)
            if whole_day and operator in ("<=", ">"):
                # A day includes all of its moments: "<= 2026-01-31" takes
                # the whole of that day in, "> 2026-01-31" leaves it out.
                moment += timedelta(days=1)
                operator = "<" if operator == "<=" else ">="
            parts.append(f"{self.column} {operator} {t.bind(time_stamp(moment))}")
        return " AND ".join(parts)


class _ExpirationStatusField(_Field):
    name = "expirationStatus"

    def match(self, t: _Translator, term: _Term) -> str:
        word = term.text.lower()
        now = time_stamp(t.now)
        if term.is_any:
            return "1"
        if word == "active":
            return f"(expiration IS NULL OR expiration > {t.bind(now)})"
        if word == "expired":
            return f"expiration <= {t.bind(now)}"
        raise t.error(
            term,
            f"'{term.text}' is not an expiration status; expected active or expired.",
        )


@attrs.frozen
class _CustomField(_Field):
    name: str

    def path(self) -> str:
        return f'$."{self.name}"'

    def match(self, t: _Translator, term: _Term) -> str:
        extract = f"json_extract(custom_fields, {t.bind(self.path())})"
        if term.is_any:
            return f"{extract} IS NOT NULL"
        if term.like is not None:
            return f"{extract} LIKE {t.bind(term.like)} ESCAPE '\\'"
        return f"CAST({extract} AS TEXT) = {t.bind(term.text)} COLLATE NOCASE"

    def compare(self, t: _Translator, comparisons: list[_Comparison]) -> str:
        parts = []
        for operator, term in comparisons:
            extract = f"json_extract(custom_fields, {t.bind(self.path())})"
            bound: Any = term.text
            try:
                bound = float(term.text)
            except ValueError:
                pass
            parts.append(f"{extract} {operator} {t.bind(bound)}")
        return " AND ".join(parts)


_VALUE_FIELD = _ValueField()


def _aliases(field: _Field, *names: str) -> dict[str, _Field]:
    return {name.lower(): field for name in (field.name, *names)}


_FIELDS: dict[str, _Field] = {
    **_aliases(_VALUE_FIELD, "name", "indicator"),
    **_aliases(_TypeField(), "indicator_type", "indicatorType"),
    **_aliases(_ScoreField(), "verdict", "reputation"),
    **_aliases(_SetField("tags", "indicator_tags", "tag"), "tag"),
    **_aliases(
        _SetField("sourceBrands", "contributions", "source"),
        "source",
        "sources",
        "sourceInstances",
    ),
    **_aliases(_DateField("firstSeen", "first_seen"), "first_seen"),
    **_aliases(_DateField("lastSeen", "last_seen"), "last_seen"),
    **_aliases(
        _DateField("expiration", "expiration"), "expirationTime", "expiration_time"
    ),
    **_aliases(_ExpirationStatusField(), "expiration_status"),
}

#: The field names that queries accept, for documentation and messages.
FIELD_NAMES: tuple[str, ...] = tuple(sorted({f.name for f in _FIELDS.values()}))
