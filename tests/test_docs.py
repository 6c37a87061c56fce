"""The documentation against the code, as a newcomer reads it: every setting in config/config.example.toml
exists with the default it states (and every setting is there), the settings the README and docs/ name
exist with the defaults they state, the README's topic table, error codes, event, error and state
examples and Home Assistant entities are the code's, and every say field they document is known. The next
drift fails here instead of for a user. (tests/test_docs_e2e.py runs the documented examples.)"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mqtt_speaker.protocol.discovery import discovery_messages
from mqtt_speaker.protocol.payloads import RequestRejected, parse_chunk, parse_say
from mqtt_speaker.protocol.topics import Command, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech import vocabulary
from mqtt_speaker.speech.vocabulary import ErrorCode, Warning_

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
EXAMPLE = ROOT / "config" / "config.example.toml"
SETTING_LINE = re.compile(r"^# ?([a-z_]+) = (.+?)(?:\s+#\s*(.*))?$")


def documented_settings() -> list[tuple[str, str, str]]:
    """Every `# key = value` line of the example config: (dotted name, value, its trailing comment)."""
    section = ""
    found = []
    for line in EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[([a-z_]+)\]", line.strip()):
            section = header.group(1) + "."
        elif match := SETTING_LINE.match(line):
            found.append((section + match.group(1), match.group(2), match.group(3) or ""))
    return found


def model_settings(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every setting of the model, as dotted names."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += model_settings(annotation, f"{name}.")
        else:
            names.append(prefix + name)
    return names


def nested(name: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    head, _, rest = name.partition(".")
    return {head: nested(rest, value) if rest else value}


def current(settings: Settings, name: str) -> Any:
    value: Any = settings
    for part in name.split("."):
        value = getattr(value, part)
    return value


def test_every_setting_is_in_the_example_config_and_every_line_there_is_a_setting() -> None:
    documented = [name for name, _, _ in documented_settings()]
    assert sorted(set(documented) - set(model_settings())) == []  # a line for a setting that does not exist
    assert sorted(set(model_settings()) - set(documented)) == []  # a setting the example does not document


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, value, comment in documented_settings() if "example" not in comment],
    ids=str,
)
def test_the_example_config_states_each_default_truly(name: str, value: str) -> None:
    stated = tomllib.loads(f"value = {value}")["value"]
    assert current(Settings(**nested(name, stated)), name) == current(Settings(), name), f"{name} = {value}"


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, value, comment in documented_settings() if "example" in comment]
)
def test_each_example_value_in_the_example_config_is_valid(name: str, value: str) -> None:
    Settings(**nested(name, tomllib.loads(f"value = {value}")["value"]))


def variable_setting(variable: str) -> str:
    """MQTT_SPEAKER_CARTESIA__API_KEY -> cartesia.api_key"""
    return variable.removeprefix("MQTT_SPEAKER_").lower().replace("__", ".")


def readme_setting_rows() -> list[tuple[list[str], list[str]]]:
    """The README's settings table: (the variables of a row, the defaults it states in backticks; none
    where it states them in words)."""
    table = README[README.index("| variable | default | meaning |") :].split("\n\n", maxsplit=1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        variables_cell, default_cell = line.split(" | ")[:2]
        variables: list[str] = []
        for token in re.findall(r"`([^`]+)`", variables_cell):
            name = token
            if token.startswith("..._"):  # the previous variable's section, another key
                name = variables[-1].rsplit("__", 1)[0] + "__" + token.removeprefix("..._")
            if name.startswith("MQTT_SPEAKER_"):
                variables.append(name)
        in_words = re.search(r"[a-z]", re.sub(r"`[^`]*`", "", default_cell))  # "the host name, lower-cased"
        rows.append((variables, [] if in_words else re.findall(r"`([^`]+)`", default_cell)))
    return rows


def shown(value: Any) -> str:
    """A default as the docs write it."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):  # as the environment and TOML write it
        return str(value).lower()
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else f"{value:.1f}"
    return str(value)


def test_every_variable_the_readme_and_docs_name_is_a_setting() -> None:
    names = set(model_settings())
    for where, text in {"README.md": README, **DOCS}.items():
        for variable in re.findall(r"MQTT_SPEAKER_[A-Z_]+[A-Z]", text):
            if variable != "MQTT_SPEAKER_CONFIG":
                assert variable_setting(variable) in names, f"{where}: {variable}"


def test_the_readme_settings_table_states_the_defaults_truly() -> None:
    defaults = Settings()
    for variables, stated in readme_setting_rows():
        assert variables
        if len(stated) != len(variables):  # a default in words ("the server's default", "none")
            continue
        for variable, text in zip(variables, stated, strict=True):
            value = current(defaults, variable_setting(variable))
            if text.endswith("…"):
                assert shown(value).startswith(text.removesuffix("…")), variable
            else:
                assert text in (shown(value), shown(float(value)) if isinstance(value, float) else ""), variable


def test_the_settings_tables_in_docs_state_the_defaults_truly() -> None:
    defaults = Settings()
    for where, text in DOCS.items():
        for section, table in re.findall(r"`\[([a-z_]+)\]`\s*\n\n(\| setting \| default \|.*?)\n\n", text, re.S):
            for name, default in re.findall(r"^\| `([a-z_]+)` \| ([^|]+?) \|", table, re.M):
                value = current(defaults, f"{section}.{name}")
                assert float(default) == value, f"{where}: [{section}] {name} = {default}, not {value}"


def readme_topic_leaves() -> set[str]:
    """What the README's topic table lists after <base>/<site>/ (or .../)."""
    table = README[README.index("| topic | direction | retained | payload |") :].split("\n\n", maxsplit=1)[0]
    leaves = set()
    for line in table.splitlines()[2:]:
        for token in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            for prefix in ("<base>/<site>/", "<base>/all/", ".../"):
                if token.startswith(prefix) and "..." not in token.removeprefix(prefix):
                    leaves.add(token.removeprefix(prefix))
    return leaves


def test_the_readme_topic_table_is_every_topic_of_the_speaker() -> None:
    topics = Topics("mqtt-speaker", "kitchen")
    own = {topic.removeprefix("mqtt-speaker/kitchen/") for topic in (topics.availability, topics.state)}
    own |= {topic.removeprefix("mqtt-speaker/kitchen/") for topic in (topics.event, topics.error)}
    shared = {topics.shared_topic("<key>", kind).removeprefix("mqtt-speaker/all/") for kind in ("start", "audio")}
    assert readme_topic_leaves() == {command.value for command in Command} | own | shared


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    listed = README[README.index("Codes: `") : README.index("### State")]
    readme_codes = set(re.findall(r"`([a-z_]+)`", listed)) & {code.value for code in ErrorCode}
    streaming = set(re.findall(r"^\| `([a-z_]+)`", DOCS["streaming.md"], re.M))
    documented = readme_codes | (streaming & {code.value for code in ErrorCode})
    assert {code.value for code in ErrorCode} - documented == set()
    codes = re.sub(r"\([^)]*\)", "", listed.split("\n\n", maxsplit=1)[0])  # the list, without its asides
    assert set(re.findall(r"`([a-z_]+)`", codes)) <= {code.value for code in ErrorCode}


EXAMPLES: dict[str, type[BaseModel]] = {
    "queued": vocabulary.QueuedEvent,
    "started": vocabulary.StartedEvent,
    "finished": vocabulary.FinishedEvent,
    "failed": vocabulary.FailedEvent,
    "dropped": vocabulary.DroppedEvent,
    "interrupted": vocabulary.InterruptedEvent,
}


def test_the_readme_event_error_and_state_examples_have_the_models_fields() -> None:
    lines = [json.loads(line) for line in README.splitlines() if line.startswith('{"')]
    events = {line["event_type"]: line for line in lines if "event_type" in line}
    assert set(events) == set(EXAMPLES)
    for event_type, model in EXAMPLES.items():
        assert set(events[event_type]) == set(model.model_fields), event_type
    (error,) = [line for line in lines if "code" in line and "event_type" not in line]
    assert set(error) == set(vocabulary.ErrorReport.model_fields)
    (state,) = [line for line in lines if "state" in line]
    assert set(state) == set(vocabulary.StateReport.model_fields)


def test_the_readme_names_every_home_assistant_entity() -> None:
    (_, payload), *_ = discovery_messages(Settings(site="kitchen"), Topics("mqtt-speaker", "kitchen"))
    names = {component["name"] for component in json.loads(payload)["components"].values()}
    start = README.index("a device with Speak")
    listed = README[start : README.index(". See", start)]
    assert {name for name in names if name in listed} == names, sorted(names)


def table_fields(text: str, header: str) -> list[str]:
    table = text[text.index(header) :].split("\n\n", maxsplit=1)[0]
    return [re.findall(r"`([a-z_]+)`", line.split(" | ")[0])[0] for line in table.splitlines()[2:]]


def known(parse: Callable[[bytes], list[Warning_]], payload: dict[str, Any], field: str) -> bool:
    """The parser knows `field`: it checks it (a null may be refused, naming it) rather than ignoring it."""
    try:
        warnings = parse(json.dumps(payload).encode())
    except RequestRejected as exc:
        return exc.field == field
    return not [w for w in warnings if w.code is ErrorCode.UNKNOWN_FIELD]


def test_every_say_field_the_readme_documents_is_known() -> None:
    def parse(payload: bytes) -> list[Warning_]:
        return parse_say(payload, max_text_length=2000).warnings

    for field in table_fields(README, "| field | type | meaning |"):
        assert known(parse, {"text": "Hello", field: None} if field != "text" else {"text": "Hello"}, field), field


def test_every_stream_field_docs_streaming_documents_is_known() -> None:
    def parse(payload: bytes) -> list[Warning_]:
        chunk = parse_chunk(payload, max_text_length=2000)
        return [*chunk.warnings, *chunk.opening_warnings]

    for field in table_fields(DOCS["streaming.md"], "| field | type | meaning |"):
        assert known(parse, {"id": "s", field: None} if field != "id" else {"id": "s"}, field), field
