"""README.md and docs/*.md stay true: relative links resolve (anchors to headings), every `fraudmon` command
shown exists with the options shown, and the README stays a short guide whose first screen has the two commands."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fraudmon.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 260
FIRST_SCREEN = 40

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>", "(", ")"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*```(\S*)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose_and_blocks(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The lines outside code fences, and each fenced line with its fence's language."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence:
            language = fence.group(1).lower() if language is None else None
            continue
        if language is None:
            prose.append(line)
        else:
            blocks.append((language, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = prose_and_blocks(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for line in prose:
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # repeated headings get -1, -2, ...
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(path: Path) -> Iterator[str]:
    prose, _ = prose_and_blocks(path.read_text(encoding="utf-8"))
    for line in prose:
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield match.group(1) or match.group(2)


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            file = (doc.parent / file_part).resolve() if file_part else doc
            if not file.exists():
                broken.append(f"{rel(doc)}: {target}: no file {file_part}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{rel(doc)}: {target}: no heading #{anchor} in {rel(file)}")
    assert not broken, "\n".join(broken)


def shell_tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in prose: read it as plain words
        return command.split()


def fraudmon_invocations(doc: Path) -> Iterator[tuple[str, list[str]]]:
    """(the shown text, the arguments after `fraudmon`) for every command in shell blocks and inline code."""
    prose, blocks = prose_and_blocks(doc.read_text(encoding="utf-8"))
    shown: list[str] = []
    pending = ""
    for language, line in blocks:
        if language not in SHELL_LANGUAGES:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        shown.append(pending + line)
        pending = ""
    for line in prose:
        for code in INLINE_CODE.findall(line):
            # placeholders and optional parts as written in prose: `promote <name>`, `[--ttl 24h]`, `add|remove`
            code = re.sub(r"<[^<>]*>", "X", code).replace("[", " ").replace("]", " ").replace("...", " ")
            if re.match(r"^\s*(\S*/)?fraudmon\s", code):
                shown.append(code)
    for text in shown:
        tokens = shell_tokens(text)
        for i, token in enumerate(tokens):
            if token == "fraudmon" or token.endswith("/fraudmon"):
                args: list[str] = []
                for arg in tokens[i + 1:]:
                    if arg in SHELL_OPERATORS or arg.startswith("#"):
                        break
                    args.append(arg)
                yield text.strip(), args


def command_options(command: Any) -> set[str]:
    """A command's option names (typer vendors its own click, so commands are read by their attributes)."""
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def resolve(root: Any, args: list[str]) -> tuple[list[str], Any, list[str]]:
    """The subcommand path the arguments name, its command, and the arguments after it. A word naming no
    subcommand of a group is an error; alternatives in prose (`add|remove|show`) must each exist."""
    path: list[str] = []
    command = root
    rest = list(args)
    while getattr(command, "commands", None) and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        for alternative in word.split("|")[1:]:
            assert alternative in command.commands, f"`fraudmon {' '.join(path)} {alternative}`: no such command"
        word = word.split("|")[0]
        assert word in command.commands, (
            f"`fraudmon {' '.join([*path, word])}`: no such command (there are: {', '.join(sorted(command.commands))})")
        path.append(word)
        command = command.commands[word]
    return path, command, rest


def shown_commands() -> list[tuple[str, str, list[str]]]:
    return [(rel(doc), text, args) for doc in DOCS for text, args in fraudmon_invocations(doc)]


def test_the_docs_show_fraudmon_commands() -> None:
    readme = [text for doc, text, _ in shown_commands() if doc == "README.md"]
    assert len(readme) >= 10, readme


@pytest.mark.parametrize(("doc", "text", "args"), shown_commands(), ids=lambda value: str(value)[:60])
def test_each_command_shown_exists_with_its_options(doc: str, text: str, args: list[str]) -> None:
    root = typer.main.get_command(app)
    path, command, rest = resolve(root, args)
    assert path, f"{doc}: `{text}` names no fraudmon command"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{doc}: `fraudmon {' '.join(path)} --help` failed: {result.output}"
    known = command_options(command)
    for arg in rest:
        option = arg.split("=", 1)[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-zA-Z]", option):
            assert option in known, (
                f"{doc}: `{text}`: `fraudmon {' '.join(path)}` has no option {option} "
                f"(it has: {', '.join(sorted(known))})")


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; move details to docs/"


def test_readme_first_screen_has_the_two_commands() -> None:
    first = "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN])
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", first, re.MULTILINE), f"{command} is not in README's first screen"
    assert "Python 3.13" in first and "3.12" in first
    assert ".venv" in first


def test_readme_names_every_alert() -> None:
    import yaml

    rules = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    readme = README.read_text(encoding="utf-8")
    named = set(re.findall(r"`(Fraud[A-Za-z]+)`", readme))
    assert named <= alerts, f"README names alerts that do not exist: {sorted(named - alerts)}"
    # a row may name a pair: `FraudFlagRateSpike` / `Drop`, `FraudModelScoreDriftHigh` / `Low`
    pairs = {re.sub(r"(Spike|High)$", {"Spike": "Drop", "High": "Low"}[m.group(2)], m.group(1))
             for m in re.finditer(r"`(Fraud[A-Za-z]+?(Spike|High))` / `(Drop|Low)`", readme)}
    assert alerts <= named | pairs, f"README's alert table lacks {sorted(alerts - named - pairs)}"
