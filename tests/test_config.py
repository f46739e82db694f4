"""Configuration: TOML file, environment, .env, validation and masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from daemon.cli import main
from daemon.config import Settings, load_settings, masked
from daemon.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TANDAVA_* variable from the outside leaks into these tests."""
    import os

    for key in list(os.environ):
        if key.startswith("TANDAVA_"):
            monkeypatch.delenv(key)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    """With no file, defaults apply and paths resolve against the working folder."""
    settings = load_settings(cwd=tmp_path)
    assert settings.config_file is None
    assert settings.paths.inbox == tmp_path.resolve() / "inbox"
    assert settings.video.clip_frames == 81
    assert settings.video.fps == 16


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """Relative paths in the file are relative to the file, not to where the daemon starts."""
    (tmp_path / "conf").mkdir()
    conf = write(tmp_path / "conf" / "tandava.toml", '[paths]\ninbox = "songs"\nstate_root = "/abs/state"\n')
    settings = load_settings(conf, cwd=Path("/"))
    assert settings.paths.inbox == (tmp_path / "conf" / "songs").resolve()
    assert settings.paths.state_root == Path("/abs/state")


def test_precedence_env_over_dotenv_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment beats .env, which beats the TOML file."""
    conf = write(tmp_path / "tandava.toml", "[engine]\ncpu_workers = 1\nattempts = 7\n[watch]\npolling = \"never\"\n")
    write(tmp_path / ".env", "TANDAVA_ENGINE__CPU_WORKERS=3\nTANDAVA_WATCH__POLLING=always\nGOOGLE_API_KEY=xyz\n")
    monkeypatch.setenv("TANDAVA_ENGINE__CPU_WORKERS", "4")
    settings = load_settings(conf)
    assert settings.engine.cpu_workers == 4
    assert settings.watch.polling == "always"
    assert settings.engine.attempts == 7


def test_bad_value_names_key_value_and_expectation(tmp_path: Path) -> None:
    """An invalid value fails at start naming the key, the value and what was expected."""
    conf = write(tmp_path / "tandava.toml", '[watch]\npolling = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    err = info.value
    assert err.key == "watch.polling"
    assert err.value == "sometimes"
    assert "'auto', 'always' or 'never'" in str(err)


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    """A typo in a key is reported, not silently ignored."""
    conf = write(tmp_path / "tandava.toml", "[watch]\nstable_secnds = 3\n")
    with pytest.raises(ConfigError, match="watch.stable_secnds"):
        load_settings(conf)


def test_bad_toml_syntax_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML fails with the file named."""
    conf = write(tmp_path / "tandava.toml", "[watch\n")
    with pytest.raises(ConfigError, match="tandava.toml"):
        load_settings(conf)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """--config pointing nowhere is an error, not a silent fall back to defaults."""
    with pytest.raises(ConfigError, match="existing TOML file"):
        load_settings(tmp_path / "nope.toml")


def test_masked_hides_secrets() -> None:
    """Secret values print as *** in `tandava config`."""

    class WithSecret(Settings):
        bot_token: SecretStr = SecretStr("123456:ABCDEF")

    data = masked(WithSecret())
    assert data["bot_token"] == "***"
    assert "123456" not in str(data)


def test_init_writes_a_file_that_loads_to_the_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tandava init` writes a commented file whose values equal the defaults."""
    target = tmp_path / "tandava.toml"
    assert main(["init", "--path", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert text.count("#") > 20
    loaded = load_settings(target)
    fresh = load_settings(cwd=tmp_path)
    assert masked(loaded) == masked(fresh)
    assert main(["init", "--path", str(target)]) == 1  # never overwrites without --force


def test_cli_reports_config_error_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI turns a bad config into one readable line and exit code 2."""
    conf = write(tmp_path / "tandava.toml", "[engine]\ncpu_workers = 0\n")
    assert main(["--config", str(conf), "status"]) == 2
    err = capsys.readouterr().err
    assert "engine.cpu_workers = 0" in err


def test_sample_config_is_valid_and_shows_the_defaults(tmp_path: Path) -> None:
    """The commented tandava.toml that `tandava init` writes loads, and every value shown is the default."""
    from daemon.host.sample import sample_config

    (tmp_path / "tandava.toml").write_text(sample_config(), encoding="utf-8")
    loaded = load_settings(tmp_path / "tandava.toml")
    # Paths are resolved against the file's folder; everything else must equal the defaults.
    assert masked(loaded) | {"paths": {}} == masked(Settings()) | {"paths": {}}


@pytest.mark.parametrize("url", ["http://127.0.0.1:8081", "https://api.telegram.org/bot/", "api.telegram.org/bot"])
def test_telegram_base_url_must_end_in_bot(tmp_path: Path, url: str) -> None:
    """A telegram.base_url not shaped http(s)://…/bot is refused at load, naming key, value and shape."""
    conf = write(tmp_path / "tandava.toml", f'[telegram]\nbase_url = "{url}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    assert info.value.key == "telegram.base_url"
    assert info.value.value == url
    assert "ending in /bot" in str(info.value)
    assert "Value error" not in str(info.value)


def test_telegram_base_url_of_a_self_hosted_server_loads(tmp_path: Path) -> None:
    """A self-hosted Bot API URL ending in /bot is accepted as written."""
    conf = write(tmp_path / "tandava.toml", '[telegram]\nbase_url = "http://127.0.0.1:8081/bot"\n')
    assert load_settings(conf).telegram.base_url == "http://127.0.0.1:8081/bot"
