"""The settings file: new defaults for the command-line options.

Where it is: `$UNMIX_CONFIG` when set, else `$XDG_CONFIG_HOME/unmix/config.toml` (an
absolute `XDG_CONFIG_HOME` only, as the XDG spec says), else `~/.config/unmix/config.toml`.
A missing default file means no settings; a missing `$UNMIX_CONFIG` file is an error (the
user named it).

What it holds (TOML): keys are the long option names of the commands (`bit-depth` or
`bit_depth`), values what the option takes (a list, or one value, for options given more
than once such as `model`). Top-level keys apply to every command that has the option;
a table per command (`[separate]`, `[eval]`, `[models.list]`) applies to that command
and wins over the top level. Flags on the command line win over both.

This module only reads the file and says which key sets which parameter of which command,
with its line; it knows nothing about click. The CLI describes its commands as
`CommandOptions` and hands the result to click as its `default_map`, so every value is
converted and checked by the option that defines it, exactly as a flag would be.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import UsageError

ENV_VAR = "UNMIX_CONFIG"
FILE_NAME = "config.toml"


@dataclass(frozen=True)
class CommandOptions:
    """The options one command takes, as the settings file names them.

    Attributes:
        path: the command's words, e.g. ("separate",) or ("models", "list"); () is the
            top-level `unmix` group itself.
        options: {long option name with underscores (`bit_depth`): parameter name (`bit_depth`,
            or `fmt` for `--format`)}.
        multiple: parameter names of the options given more than once (`-m a -m b`).
        paths: parameter names whose values are file paths (`~` is expanded: no shell
            expands it in a file).
    """

    path: Tuple[str, ...]
    options: Mapping[str, str]
    multiple: frozenset = frozenset()
    paths: frozenset = frozenset()


@dataclass(frozen=True)
class Value:
    """One setting: the value as the file has it (lists for multiple options), and where."""

    value: Any
    file: Path
    line: int
    key: str  # as written in the file
    from_table: bool = False  # from the command's own table (else the top level)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Settings:
    """What the settings file sets: `values[command path][parameter name] -> Value`."""

    file: Optional[Path]
    found: bool
    why: str  # how the file was chosen: "UNMIX_CONFIG", "XDG_CONFIG_HOME" or "~/.config"
    values: Dict[Tuple[str, ...], Dict[str, Value]] = field(default_factory=dict)

    def default_map(self) -> Dict[str, Any]:
        """click's nested `default_map` for the top-level group: its own parameters at the
        top, each sub-command's under its name (groups nest)."""
        out: Dict[str, Any] = {}
        for path, params in self.values.items():
            node = out
            for word in path:
                node = node.setdefault(word, {})
            for name, v in params.items():
                node[name] = v.value
        return out

    def lookup(self, path: Sequence[str], param: str) -> Optional[Value]:
        return self.values.get(tuple(path), {}).get(param)


def config_path(environ: Mapping[str, str] = os.environ) -> Tuple[Path, str]:
    """(where the settings file is, which rule chose it)."""
    explicit = environ.get(ENV_VAR)
    if explicit:
        return Path(explicit).expanduser(), ENV_VAR
    xdg = environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "unmix" / FILE_NAME, "XDG_CONFIG_HOME"
    return Path.home() / ".config" / "unmix" / FILE_NAME, "~/.config"


def load(commands: Sequence[CommandOptions], path: Optional[Path] = None,
         environ: Mapping[str, str] = os.environ) -> Settings:
    """Read the settings file (see the module docstring) for these commands.

    Raises:
        UsageError: (path `file:line`) a TOML syntax error, a key no command takes, a key
            given twice (`bit-depth` and `bit_depth`), a list for an option that takes one
            value, or an unreadable / missing `$UNMIX_CONFIG` file.
    """
    why = "argument"
    if path is None:
        path, why = config_path(environ)
    path = Path(path)
    if not path.is_file():
        if why == ENV_VAR or path.exists():
            raise UsageError("settings file not found" if not path.exists() else "settings file is not a file",
                             path=path, hint=f"fix or unset {ENV_VAR}" if why == ENV_VAR else None)
        return Settings(path, False, why)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the settings file ({getattr(exc, 'strerror', None) or exc})", path=path) from exc
    data = _parse_toml(text, path)
    settings = Settings(path, True, why)
    lines = _KeyLines(text)
    by_path = {c.path: c for c in commands}
    sections = {c.path for c in commands if c.path}
    top = {}
    tables = {}
    for key, value in data.items():
        words = _section_words(key, value, (), sections)
        if words is not None:
            _collect_tables(words, value, sections, tables, lines, path)
        else:
            top[key] = value
    # Top-level keys: every command that has the option (the group itself included).
    for key, value in top.items():
        name = _norm(key)
        line = lines.find((), key)
        users = [c for c in commands if name in c.options]
        if not users:
            raise UsageError(f"unknown setting '{key}': no command has --{key.replace('_', '-')}", path=f"{path}:{line}",
                             hint=_suggest(name, {n for c in commands for n in c.options}))
        for command in users:
            _put(settings, command, key, value, path, line, override=False)
    for words, entries in tables.items():
        command = by_path[words]
        for key, value in entries.items():
            line = lines.find(words, key)
            if _norm(key) not in command.options:
                raise UsageError(f"unknown setting '{key}' for `unmix {' '.join(words)}`", path=f"{path}:{line}",
                                 hint=_suggest(_norm(key), set(command.options)) or
                                 f"see `unmix {' '.join(words)} --help` for its options")
            _put(settings, command, key, value, path, line, override=True)
    return settings


# --- helpers -------------------------------------------------------------------------------


def _parse_toml(text: str, path: Path) -> Dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # the same parser, as a package
        except ModuleNotFoundError:
            raise UsageError("reading the settings file needs Python 3.11, or the tomli package",
                             path=path, hint="pip install tomli") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)"; Python 3.14 also has .lineno.
        msg = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", msg)
        line = getattr(exc, "lineno", None) or (int(m.group(1)) if m else None)
        cause = getattr(exc, "msg", None) or (msg[:m.start()] if m else msg)
        where = f"{path}:{line}" if line else str(path)
        raise UsageError(f"invalid TOML: {cause}", path=where) from None


def _norm(key: str) -> str:
    return key.replace("-", "_")


def _section_words(key, value, prefix, sections) -> Optional[Tuple[str, ...]]:
    """The command path a top-level (or nested) table names, or None if `key` is a setting."""
    words = prefix + (key,)
    if isinstance(value, dict) and any(s[:len(words)] == words for s in sections):
        return words
    return None


def _collect_tables(words, table, sections, tables, lines, path) -> None:
    """A command's table: its settings, and the tables of its sub-commands (`[models.list]`)."""
    for key, value in table.items():
        sub = _section_words(key, value, words, sections)
        if sub is not None:
            _collect_tables(sub, value, sections, tables, lines, path)
        elif words in sections:
            tables.setdefault(words, {})[key] = value
        else:
            raise UsageError(f"unknown setting '{key}' in [{'.'.join(words)}]", path=f"{path}:{lines.find(words, key)}",
                             hint="put options in the table of a command, e.g. [" + ".".join(
                                 next(s for s in sections if s[:len(words)] == words)) + "]")


def _put(settings: Settings, command: CommandOptions, key: str, value: Any, path: Path, line: int,
         override: bool) -> None:
    """Store one setting. A command's own table overrides the top level; the same option twice
    in one table (`bit-depth` and `bit_depth`) is an error."""
    param = command.options[_norm(key)]
    slot = settings.values.setdefault(command.path, {})
    previous = slot.get(param)
    if previous is not None and previous.from_table == override:
        raise UsageError(f"'{key}' is set twice in one table (also line {previous.line})", path=f"{path}:{line}")
    if isinstance(value, dict):
        raise UsageError(f"'{key}' takes a value, not a table", path=f"{path}:{line}")
    if param in command.multiple:
        value = list(value) if isinstance(value, list) else [value]
    elif isinstance(value, list):
        raise UsageError(f"'{key}' takes one value, not a list", path=f"{path}:{line}",
                         hint='give one value; write a comma-separated option as on the command line, e.g. "vocals,drums"')
    if param in command.paths:
        value = [_expand(v) for v in value] if isinstance(value, list) else _expand(value)
    slot[param] = Value(value, path, line, key, from_table=override)


def _expand(value: Any) -> Any:
    return os.path.expanduser(value) if isinstance(value, str) else value


def _suggest(name: str, known: set) -> Optional[str]:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"did you mean '{close[0].replace('_', '-')}'?" if close else None


class _KeyLines:
    """Finds the line of a key in the file's text (tomllib reports none for valid files).

    Tracks `[table]` headers and dotted keys (`separate.model = ...`); good enough for the
    files people write by hand. Falls back to the table's header line, then line 1.
    """

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=""")

    def __init__(self, text: str) -> None:
        self.keys: Dict[Tuple[str, ...], int] = {}
        self.headers: Dict[Tuple[str, ...], int] = {}
        table: Tuple[str, ...] = ()
        in_multiline = None
        for number, raw in enumerate(text.splitlines(), 1):
            if in_multiline:
                if raw.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = self._HEADER.match(raw)
            if header:
                table = self._words(header.group(1))
                self.headers.setdefault(table, number)
                continue
            key = self._KEY.match(raw)
            if key:
                self.keys.setdefault(table + self._words(key.group(1)), number)
                rest = raw[key.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    @staticmethod
    def _words(dotted: str) -> Tuple[str, ...]:
        return tuple(w.strip().strip("\"'") for w in re.findall(r"""\s*("[^"]*"|'[^']*'|[^.]+)\s*\.?""", dotted))

    def find(self, table: Tuple[str, ...], key: str) -> int:
        if table + (key,) in self.keys:
            return self.keys[table + (key,)]
        return self.headers.get(table, 1)


__all__ = ["CommandOptions", "ENV_VAR", "Settings", "Value", "config_path", "load"]
