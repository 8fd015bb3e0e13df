"""Readers for the deployment files, so the tests assert on their structure rather than on text.

- `parse_nginx`: nginx's configuration syntax (directives, blocks, quotes, comments) as a tree.
- `nginx_seconds`, `nginx_bytes`, `compose_bytes`: nginx times and sizes, compose memory sizes,
  as numbers.
- `dockerfile_instructions`: a Dockerfile's instructions, continuation lines joined.
- `dockerignored`: whether a path is left out of the build context by `.dockerignore`.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "nginx"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"

# How the container runs the API: on every interface of its own network namespace, where only
# nginx reaches it.
API_COMMAND = ["cryptomarket", "serve", "--host", "0.0.0.0", "--port", "8003"]  # noqa: S104


# nginx


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list["Directive"] | None = None
    line: int = 0

    def children(self, name: str) -> list["Directive"]:
        return [d for d in self.block or [] if d.name == name]

    def child(self, name: str) -> "Directive":
        found = self.children(name)
        assert len(found) == 1, f"expected one {name!r} in {self.name} {self.args}, got {found}"
        return found[0]


_SPECIAL = "{};"
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _tokenize(text: str) -> list[tuple[str, int, bool]]:
    """(token, line, quoted) for every word, quoted string, `{`, `}` and `;`."""
    tokens: list[tuple[str, int, bool]] = []
    i, line = 0, 1
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
            i += 1
        elif char.isspace():
            i += 1
        elif char == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        elif char in _SPECIAL:
            tokens.append((char, line, False))
            i += 1
        elif char in "\"'":
            start_line, end, value = line, i + 1, []
            while text[end] != char:
                if text[end] == "\\" and end + 1 < len(text):
                    end += 1
                    value.append(_ESCAPES.get(text[end], text[end]))
                else:
                    value.append(text[end])
                line += text[end] == "\n"
                end += 1
            tokens.append(("".join(value), start_line, True))
            i = end + 1
        else:
            start = i
            while i < len(text) and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            tokens.append((text[start:i], line, False))
    return tokens


def parse_nginx(text: str) -> list[Directive]:
    """The directives of an nginx configuration file (`include` is not followed)."""
    tokens = _tokenize(text)
    position = 0

    def block(nested: bool) -> list[Directive]:
        nonlocal position
        directives: list[Directive] = []
        words: list[str] = []
        line = 0
        while position < len(tokens):
            token, token_line, quoted = tokens[position]
            position += 1
            if quoted or token not in _SPECIAL:
                line = line or token_line
                words.append(token)
            elif token == ";":
                assert words, f"empty directive at line {token_line}"
                directives.append(Directive(words[0], words[1:], None, line))
                words, line = [], 0
            elif token == "{":
                assert words, f"block without a name at line {token_line}"
                directives.append(Directive(words[0], words[1:], block(nested=True), line))
                words, line = [], 0
            else:  # "}"
                assert nested and not words, f"unexpected '}}' at line {token_line}"
                return directives
        assert not nested and not words, "unterminated block or directive at the end"
        return directives

    return block(nested=False)


def walk(directives: list[Directive]) -> Iterator[Directive]:
    for directive in directives:
        yield directive
        yield from walk(directive.block or [])


_NGINX_TIME = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")
_NGINX_UNITS = {
    "ms": 0.001,
    "s": 1,
    None: 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "M": 2592000,
    "y": 31536000,
}


def nginx_seconds(value: str) -> float:
    """An nginx time ("60s", "1m30s", "90") in seconds."""
    parts = list(_NGINX_TIME.finditer(value))
    assert parts and "".join(p.group(0) for p in parts) == value, f"not an nginx time: {value!r}"
    return sum(int(p.group(1)) * _NGINX_UNITS[p.group(2)] for p in parts)


_NGINX_SIZE = re.compile(r"(\d+)([kKmMgG]?)")


def nginx_bytes(value: str) -> int:
    """An nginx size ("64k", "1m", "512") in bytes."""
    match = _NGINX_SIZE.fullmatch(value)
    assert match, f"not an nginx size: {value!r}"
    power = " kmg".index(match.group(2).lower() or " ")
    return int(match.group(1)) << (10 * power)


# docker compose

_COMPOSE_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", re.IGNORECASE)


def compose_bytes(value: str | int) -> int:
    """A compose memory size ("192m", "1g", "512mb", 1048576) in bytes, as Docker reads it."""
    if isinstance(value, int):
        return value
    match = _COMPOSE_SIZE.fullmatch(value.strip())
    assert match, f"not a memory size: {value!r}"
    unit = match.group(2).lower()
    return int(float(match.group(1)) * 1024 ** "bkmg".index(unit or "b"))


_COMPOSE_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+")


def is_compose_duration(value: object) -> bool:
    return isinstance(value, str) and _COMPOSE_DURATION.fullmatch(value) is not None


# Dockerfile


@dataclass
class Instruction:
    keyword: str
    value: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions in order; comments dropped, `\\` continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment between continuation lines
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, value = whole.partition(" ")
            instructions.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages: each starts with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `*` and `?` within one path part, `**` across parts."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str, dockerignore: str) -> bool:
    """Whether `.dockerignore` leaves `path` (relative to the context) out of the build context.

    As Docker decides it: rules apply in order, the last matching one wins, `!` brings a path
    back, and a rule that matches a parent directory matches everything under it.
    """
    excluded = False
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in dockerignore.splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").strip().strip("/")
        regex = _dockerignore_regex(pattern)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded
