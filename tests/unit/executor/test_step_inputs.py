"""What a step gets (config checks, environment) and what it gives back (outputs file, exit text)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from legato.executor.outputs_file import parse_outputs, read_outputs_file
from legato.executor.process import describe_exit
from legato.executor.runners.http import HttpResponse, encode_body, is_json, response_outputs
from legato.executor.runners.python import FUNCTION_SPEC, worker_pythonpath
from legato.executor.runners.sleep import SleepConfig
from legato.executor.step_env import param_env_name, step_environment
from legato.executor.step_runner import StepFailed, parse_config
from legato.protocol import WorkItem


def item(**params: object) -> WorkItem:
    return WorkItem(
        attempt_id="a-1",
        workflow_id="wf",
        instance_id="i-1",
        step_id="s",
        attempt=2,
        step_type="shell",
        params=dict(params),
        reply_subject="legato.event.0.wf",
    )


def test_outputs_as_json_object_or_key_value_lines() -> None:
    assert parse_outputs('{"a": 1, "b": [true]}') == {"a": 1, "b": [True]}
    assert parse_outputs("") == {}
    text = '# a comment\ncount=3\nname=some text\nflag=true\nobj={"k": null}\nempty=\nnan=NaN\n'
    assert parse_outputs(text) == {
        "count": 3,
        "name": "some text",
        "flag": True,
        "obj": {"k": None},
        "empty": "",
        "nan": "NaN",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"a": ', "outputs file is not valid JSON"),
        ("{}{}", "outputs file is not valid JSON"),
        ("just words", "outputs file line 1: expected key=value"),
        ("a=1\n=2", "outputs file line 2: expected key=value"),
    ],
)
def test_bad_outputs_fail_with_a_clear_error(text: str, error: str) -> None:
    with pytest.raises(StepFailed, match=error):
        parse_outputs(text)


def test_outputs_file_over_the_limit_fails(tmp_path: Path) -> None:
    path = tmp_path / "outputs"
    assert read_outputs_file(path) == {}  # never written
    path.write_text(json.dumps({"big": "x" * 2000}))
    with pytest.raises(StepFailed, match="larger than 1 KiB"):
        read_outputs_file(path, limit=1024)


def test_step_environment_carries_params_and_identity(tmp_path: Path) -> None:
    env = step_environment(
        item(name="ada", n=3, tags=["a"], **{"odd-name.x": None}),
        tmp_path,
        outputs_path=tmp_path / "out",
        executor_env={"PATH": "/bin", "LEGATO_DATABASE_URL": "postgresql://x", "AWS_SECRET_ACCESS_KEY": "k"},
    )
    assert env["PATH"] == "/bin"
    assert "LEGATO_DATABASE_URL" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["LEGATO_PARAM_NAME"] == "ada"
    assert env["LEGATO_PARAM_N"] == "3"
    assert env["LEGATO_PARAM_TAGS"] == '["a"]'
    assert env["LEGATO_PARAM_ODD_NAME_X"] == "null"
    assert json.loads(env["LEGATO_PARAMS"]) == {"name": "ada", "n": 3, "tags": ["a"], "odd-name.x": None}
    assert json.loads(Path(env["LEGATO_PARAMS_FILE"]).read_text()) == json.loads(env["LEGATO_PARAMS"])
    assert env["LEGATO_OUTPUTS"] == str(tmp_path / "out")
    assert (env["LEGATO_WORKFLOW_ID"], env["LEGATO_INSTANCE_ID"], env["LEGATO_STEP_ID"]) == ("wf", "i-1", "s")
    assert env["LEGATO_ATTEMPT"] == "2"
    assert env["LEGATO_RUN_ID"] == "i-1" and env["LEGATO_ATTEMPT_ID"]
    assert param_env_name("dateRange") == "LEGATO_PARAM_DATERANGE"


def test_a_nul_byte_in_a_param_fails_the_step_instead_of_the_spawn(tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="NUL byte"):
        step_environment(item(bad="a\0b"), tmp_path, executor_env={})


def test_config_errors_name_the_field() -> None:
    with pytest.raises(StepFailed, match=r"config\.duration: expected `float`, got `str`"):
        parse_config({"duration": "soon"}, SleepConfig)
    with pytest.raises(StepFailed, match=r"config\.duration: expected `float` >= 0.0"):
        parse_config({"duration": -1}, SleepConfig)
    with pytest.raises(StepFailed, match="config: object missing required field `duration`"):
        parse_config({}, SleepConfig)
    assert parse_config({"duration": 2, "extra": 1}, SleepConfig) == SleepConfig(duration=2.0)
    assert isinstance(parse_config({"duration": 0}, SleepConfig), msgspec.Struct)


def test_exit_descriptions() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(2, "no such file") == "exit code 2: no such file"
    assert describe_exit(-9) == "killed by signal SIGKILL"
    assert describe_exit(-11, "") == "killed by signal SIGSEGV"


def test_python_function_spec_and_worker_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert FUNCTION_SPEC.match("pkg.mod:fn") and FUNCTION_SPEC.match("mod:Class.method")
    for bad in ("pkg.mod", "pkg.mod:", ":fn", "pkg/mod:fn", "a:b:c"):
        assert not FUNCTION_SPEC.match(bad), bad
    monkeypatch.chdir(tmp_path)
    assert worker_pythonpath("/a:/b") == f"{tmp_path}:/a:/b"
    assert worker_pythonpath(None) == str(tmp_path)


def test_http_body_encoding_and_outputs() -> None:
    assert encode_body(None, {}) == (None, {})
    assert encode_body("plain", {}) == (b"plain", {"Content-Type": "text/plain; charset=utf-8"})
    assert encode_body({"a": 1}, {"content-type": "application/vnd+json"}) == (
        b'{"a":1}',
        {"content-type": "application/vnd+json"},
    )
    assert encode_body([1], {})[1]["Content-Type"] == "application/json"
    assert is_json("application/problem+json; charset=utf-8") and not is_json("text/html")
    parsed = response_outputs(HttpResponse(200, {"content-type": "application/json"}, b'{"x": 1}', False))
    assert parsed == {"status": 200, "headers": {"content-type": "application/json"}, "body": {"x": 1}}
    cut = response_outputs(HttpResponse(200, {"content-type": "application/json"}, b'{"x": ', True))
    assert cut["body"] == '{"x": ' and cut["truncated"] is True
    latin = response_outputs(
        HttpResponse(200, {"content-type": "text/plain; charset=latin-1"}, b"caf\xe9", False)
    )
    assert latin["body"] == "café"


def test_the_operator_may_pass_chosen_variables_but_never_legato_ones(tmp_path: Path) -> None:
    env = step_environment(
        item(),
        tmp_path,
        declared={"MINE": "1"},
        executor_env={
            "LEGATO_STEP_ENV_PASSTHROUGH": "HTTPS_PROXY, LEGATO_DATABASE_URL,NOT_SET",
            "HTTPS_PROXY": "http://proxy:3128",
            "LEGATO_DATABASE_URL": "postgresql://secret",
            "OTHER": "x",
        },
    )
    assert env["HTTPS_PROXY"] == "http://proxy:3128" and env["MINE"] == "1"
    assert "LEGATO_DATABASE_URL" not in env and "OTHER" not in env and "NOT_SET" not in env
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # a standard one when the executor has none
