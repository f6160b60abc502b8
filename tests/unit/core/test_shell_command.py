"""Shell command templates: each value quoted for where it sits, run by a real /bin/sh; misplaced
substitutions refused; raw(…) and unparsable commands reported by `legato workflow validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.core import DefinitionError, compile_workflow, parse_definition
from legato.core.errors import DefinitionIssue
from legato.core.shell_command import compile_shell_command

NASTY = [
    "plain",
    "",
    "a b",
    "it's",
    'say "hi"',
    "$(id)",
    "`id`",
    "$HOME ${HOME}",
    "back\\slash\\",
    "semi; colon && amp | pipe > out",
    "new\nline",
    "'\"'\"'",
    "-n",
    "*",
    "~",
    "\\'; id #",
]


def run(command: str, value: object) -> list[str]:
    """What the arguments of ``printf '[%s]'`` were after the shell parsed the rendered command."""
    issues: list[DefinitionIssue] = []
    node = compile_shell_command(command, "command", issues)
    assert issues == []
    rendered = node.evaluate({"params": {"x": value}})
    out = subprocess.run(["/bin/sh", "-c", rendered], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]  # bytes: text mode would turn "\r" into "\n"


@pytest.mark.parametrize("value", NASTY)
def test_a_value_is_one_literal_word_in_every_quoting_context(value: str) -> None:
    assert run("printf '%s\\0' ${params.x}", value) == [value]
    assert run("printf '%s\\0' \"${params.x}\"", value) == [value]
    assert run("printf '%s\\0' 'v=${params.x}'", value) == [f"v={value}"]
    assert run("printf '%s\\0' \"$(printf '%s' ${params.x})\"", value) == [value.rstrip("\n")]
    assert run("printf '%s\\0' \"a$(printf '%s' \"${params.x}\")b\"", value) == [f"a{value.rstrip(chr(10))}b"]
    assert run("printf '%s\\0' pre${params.x}post", value) == [f"pre{value}post"]
    # A "#" right after a value starts no comment: the quote after it is a real one.
    assert run("printf '%s\\0' ${params.x}#\"${params.x}\"", value) == [f"{value}#{value}"]
    # A comment and a here-document before it do not confuse the reading of the quotes.
    assert run("cat >/dev/null <<'EOF'\n'\nEOF\n# it's\nprintf '%s\\0' ${params.x}", value) == [value]


def test_non_text_values_are_rendered_then_quoted() -> None:
    assert run("printf '%s\\0' ${params.x}", ["a b", 1]) == ['["a b",1]']
    assert run("printf '%s\\0' ${params.x}", 7) == ["7"]
    assert run("printf '%s\\0' ${shell_quote(params.x)}", "a b") == ["a b"]  # not quoted twice


def test_raw_pastes_shell_code() -> None:
    assert run("printf '%s\\0' ${raw(params.x)}", "a b") == ["a", "b"]


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("echo `echo ${params.x}`", "inside backticks"),
        ("cat <<EOF\n${params.x}\nEOF", "inside a here-document"),
        ("echo $${HOME:-${params.x}}", "inside a shell ${…} expansion"),
        ("echo \\${params.x}", "right after a backslash"),
        ("echo $'a\\' ${params.x}'", "inside $'…'"),
        ('echo "$(case a in a) echo ${params.x};; esac)"', "after a `case` inside $(…)"),
    ],
)
def test_a_value_where_no_quoting_is_right_is_a_definition_error(command: str, where: str) -> None:
    text = json.dumps(
        {"id": "w", "params": {"x": "a"}, "steps": [{"id": "s", "type": "shell", "command": command}]}
    )
    with pytest.raises(DefinitionError) as err:
        compile_workflow(parse_definition(text))
    assert any(where in e.message and e.path == "steps[0].command" for e in err.value.errors), (
        err.value.errors
    )


def test_secret_params_are_references_to_a_variable_never_values() -> None:
    issues: list[DefinitionIssue] = []
    node = compile_shell_command("echo ${params.x} \"${params.x}\" '${params.x}'", "c", issues)
    rendered = node.evaluate({"params": {"x": {"$secret": "db.pass"}}})
    assert rendered == (
        'echo "${LEGATO_SECRET_DB_PASS}" "${LEGATO_SECRET_DB_PASS}" \'\'"${LEGATO_SECRET_DB_PASS}"\'\''
    )
    out = subprocess.run(
        ["/bin/sh", "-c", rendered], env={"LEGATO_SECRET_DB_PASS": "s3 cr't"}, capture_output=True, text=True
    ).stdout
    assert out == "s3 cr't s3 cr't s3 cr't\n"


def test_validate_warns_about_raw_and_about_a_command_sh_cannot_parse(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(
        "id: w\nparams: {x: a}\nsteps:\n"
        "  - {id: s, type: shell, command: 'echo ${raw(params.x)}'}\n"
        "  - {id: t, type: shell, command: 'echo a (${params.x} of 3)'}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "legato.cli.main", "workflow", "validate", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr  # warnings, not errors
    assert "warning: steps[0].command: ${raw(params.x)} is pasted unquoted" in done.stdout
    assert (
        'warning: steps[1].command: /bin/sh cannot parse it: 1: Syntax error: "(" unexpected' in done.stdout
    )


SHAPES = [
    "printf '%s\\0' ${params.x}",
    "printf '%s\\0' \"<${params.x}>\"",
    "printf '%s\\0' '<${params.x}>'",
    "printf '%s\\0' \"$(printf '%s' \"${params.x}\")\"",
    "printf '%s\\0' a${params.x}\"b${params.x}\"'c${params.x}'",
]


@settings(max_examples=150, deadline=None)
@given(
    value=st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40),
    shape=st.sampled_from(SHAPES),
)
def test_any_text_reaches_the_shell_unchanged(value: str, shape: str) -> None:
    expected = {
        SHAPES[0]: [value],
        SHAPES[1]: [f"<{value}>"],
        SHAPES[2]: [f"<{value}>"],
        SHAPES[3]: [value.rstrip("\n")],
        SHAPES[4]: [f"a{value}b{value}c{value}"],
    }[shape]
    assert run(shape, value) == expected
