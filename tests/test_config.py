"""Configuration: defaults, TOML, environment, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from device.config import (
    SECTIONS,
    ConfigError,
    Secret,
    load_config,
    parse_config,
    read_api_key,
    realtime_endpoint,
    realtime_url,
    require_cloud,
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid_and_sensible() -> None:
    cfg = load_config(path=None, env={})
    assert cfg.wake.models == ["okay_nabu"] and cfg.wake.engine == "micro"
    assert cfg.assistant.reasoning_effort == "low"
    assert cfg.turn.silence_ms == 700 and cfg.turn.follow_up_ms == 5000
    assert cfg.audio.preroll_ms <= 500


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[cloud]\nendpoint = "https://a.openai.azure.com"\ndeployment = "file"\n'
        "[turn]\nsilence_ms = 900\n[wake]\nmodels = ['okay_nabu', 'alexa']\n"
        "[wake.thresholds]\nalexa = 0.9\n",
    )
    env = {"AZURE_OPENAI_DEPLOYMENT": "env", "AZURE_OPENAI_API_KEY": "k"}
    cfg = load_config(path, env=env, overrides={"cloud.endpoint": "http://127.0.0.1:1"})
    assert cfg.cloud.deployment == "env"
    assert cfg.cloud.endpoint == "http://127.0.0.1:1"
    assert cfg.turn.silence_ms == 900
    assert cfg.wake.thresholds == {"alexa": 0.9}
    assert cfg.api_key.reveal() == "k"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[audio]\npreroll_ms = '300'", "audio.preroll_ms must be an integer, got '300'"),
        ("[audio]\nprerol_ms = 300", "unknown key 'audio.prerol_ms'"),
        ("[audio]\nprerol_ms = 300", "did you mean 'preroll_ms'"),
        ("[audoi]\npreroll_ms = 300", "unknown section '[audoi]'"),
        ("[audio]\npreroll_ms = 900", "audio.preroll_ms must be between 0 and 500"),
        ("[assistant]\nreasoning_effort = 'max'", "assistant.reasoning_effort must be one of"),
        ("[turn]\nsilence_ms = true", "turn.silence_ms must be an integer, got True"),
        ("[cloud]\nendpoint = 'openai.azure.com'", "cloud.endpoint must be a URL"),
        ("audio = 3", "'audio' in"),
        ("[audio\n", "is not valid TOML"),
        ("[mqtt]\ndevice_id = 'my kitchen'", "mqtt.device_id may hold only letters"),
        ("[mqtt]\ntopic_prefix = 'home/#'", "mqtt.topic_prefix must be a plain topic"),
        ("[mqtt]\narbitration_window_ms = 500", "mqtt.arbitration_window_ms must be between"),
        ("[mqtt]\nport = 0", "mqtt.port must be between 1 and 65535"),
        ("[mqtt]\npassword = 'x'", "unknown key 'mqtt.password'"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, toml), env={})


def test_missing_file_given_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_run_needs_an_endpoint_and_a_key() -> None:
    with pytest.raises(ConfigError, match=r"cloud\.endpoint is not set"):
        require_cloud(parse_config({}))
    cfg = load_config(None, env={}, overrides={"cloud.endpoint": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        require_cloud(cfg)


def test_key_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "azure-openai-api-key").write_text("from-credential\n")
    assert read_api_key({"CREDENTIALS_DIRECTORY": str(tmp_path)}).reveal() == "from-credential"
    assert (
        read_api_key(
            {"AZURE_OPENAI_API_KEY": "env", "CREDENTIALS_DIRECTORY": str(tmp_path)}
        ).reveal()
        == "env"
    )


def test_the_mqtt_password_is_a_credential_too(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text("broker-secret\n")
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.mqtt_password.reveal() == "broker-secret"
    assert "broker-secret" not in repr(cfg)
    assert not load_config(None, env={}).mqtt_password  # none: no password


def test_the_key_never_shows_itself() -> None:
    s = Secret("sk-very-secret")
    cfg = load_config(None, env={"AZURE_OPENAI_API_KEY": "sk-very-secret"})
    assert "very-secret" not in repr(s) + str(s) + repr(cfg) + str(cfg)


@pytest.mark.parametrize(
    ("endpoint", "deployment", "url"),
    [
        (
            "https://res.openai.azure.com",
            "gpt-realtime-2",
            "wss://res.openai.azure.com/openai/v1/realtime?model=gpt-realtime-2",
        ),
        (
            "https://res.cognitiveservices.azure.com/",
            "dep",
            "wss://res.cognitiveservices.azure.com/openai/v1/realtime?model=dep",
        ),
        (
            "http://127.0.0.1:8765",
            "gpt-realtime-2",
            "ws://127.0.0.1:8765/openai/v1/realtime?model=gpt-realtime-2",
        ),
    ],
)
def test_realtime_url(endpoint: str, deployment: str, url: str) -> None:
    assert realtime_url(endpoint, deployment) == url


def test_cli_exits_78_and_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[turn]\nsilence_ms = 'long'\n")
    r = subprocess.run(
        [sys.executable, "-m", "device", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78
    assert "turn.silence_ms" in r.stderr


def test_the_shipped_example_config_is_valid_and_documents_the_defaults() -> None:
    example = Path(__file__).parent.parent / "systemd" / "config.example.toml"
    cfg = load_config(example, env={})
    defaults = load_config(None, env={})
    assert cfg.cloud.endpoint == "https://my-resource.openai.azure.com"  # the one example value
    assert dataclasses.replace(cfg, cloud=defaults.cloud) == defaults
    # and every key is there, with a word about it
    text = example.read_text()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            documented = rf"^(# )?({f.name} = |\[{section}\.{f.name}[\].])"
            assert re.search(documented, text, re.M), f"{section}.{f.name}"


def test_reasoning_effort_is_what_the_endpoint_documents() -> None:
    azure = {"cloud": {"endpoint": "https://res.openai.azure.com"}}
    with pytest.raises(ConfigError, match="minimal, low, medium, high, or none"):
        parse_config({**azure, "assistant": {"reasoning_effort": "xhigh"}})
    openai = {"cloud": {"endpoint": "https://api.openai.com"}}
    assert parse_config({**openai, "assistant": {"reasoning_effort": "xhigh"}})
    assert parse_config({**azure, "assistant": {"reasoning_effort": "none"}})


GA = "wss://res.openai.azure.com/openai/v1/realtime?model="


@pytest.mark.parametrize(
    ("endpoint", "deployment", "url"),
    [
        ("https://res.openai.azure.com", "", GA + "gpt-realtime-2"),
        ("https://res.openai.azure.com/", "mine", GA + "mine"),
        ("https://res.openai.azure.com/openai/v1/", "mine", GA + "mine"),  # the portal's GA form
        ("https://res.openai.azure.com/openai/v1", "", GA + "gpt-realtime-2"),
        ("wss://res.openai.azure.com/openai/v1/realtime?model=mine", "", GA + "mine"),
        ("https://res.openai.azure.com/openai/v1/realtime?model=mine", "mine", GA + "mine"),
        ("wss://res.openai.azure.com", "", GA + "gpt-realtime-2"),
        (
            "https://res.cognitiveservices.azure.com/openai/v1/",
            "",
            "wss://res.cognitiveservices.azure.com/openai/v1/realtime?model=gpt-realtime-2",
        ),
        (
            "https://res.services.ai.azure.com/api/projects/kitchen",  # Foundry
            "mine",
            "wss://res.services.ai.azure.com/openai/v1/realtime?model=mine",
        ),
        (
            "http://127.0.0.1:8765",
            "",
            "ws://127.0.0.1:8765/openai/v1/realtime?model=gpt-realtime-2",
        ),
    ],
)
def test_every_endpoint_form_leads_to_the_one_ga_url(
    endpoint: str, deployment: str, url: str
) -> None:
    cfg = parse_config({"cloud": {"endpoint": endpoint, "deployment": deployment}})
    assert realtime_endpoint(cfg.cloud).url == url


def test_a_deployment_in_the_url_never_silently_replaces_the_configured_one() -> None:
    with pytest.raises(
        ConfigError, match=r"names the deployment 'other' but cloud\.deployment is 'mine'"
    ):
        parse_config(
            {
                "cloud": {
                    "endpoint": "https://res.openai.azure.com/openai/v1/realtime?model=other",
                    "deployment": "mine",
                }
            }
        )
