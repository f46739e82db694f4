"""`tandava init`'s sample: every key of the settings model, at its default, explained, and in the README."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, Field

from daemon.config import Settings, load_settings
from daemon.host.sample import model_fields, model_keys, note_for, sample_config

README = Path(__file__).resolve().parent.parent / "README.md"
_TABLE = re.compile(r"^(# )?\[([\w.]+)\]$")
_KEY = re.compile(r"^(# )?(\w+) = ")


def written_keys(text: str) -> dict[str, bool]:
    """Every dotted key a sample writes, and whether it is commented out."""
    keys: dict[str, bool] = {}
    section = ""
    for line in text.splitlines():
        if table := _TABLE.match(line):
            section = table.group(2) + "."
        elif key := _KEY.match(line):
            keys[section + key.group(2)] = bool(key.group(1))
    return keys


def test_init_writes_every_key_of_the_settings_model() -> None:
    """The keys in the sample (live or commented out) are exactly the settings model's keys."""
    assert set(written_keys(sample_config())) == set(model_keys())
    assert {"web.port", "web.token", "telegram.chat_id", "telegram.allowed_users",
            "comfy.managed.folder"} <= set(written_keys(sample_config()))


def test_every_key_has_a_note() -> None:
    """Each key of the model carries a one-line note for the sample, so none is written unexplained."""
    unexplained = [key for key, field in model_fields() if not note_for(key, field)]
    assert not unexplained, f"add a line for {unexplained} to NOTES in daemon/host/sample.py"


def test_secrets_and_unset_keys_are_commented_out() -> None:
    """Tokens, keys and optional paths are shown commented out: a default of "" would mean "none"."""
    keys = written_keys(sample_config())
    for key in ("web.token", "telegram.token", "gemini.api_key", "telegram.chat_id", "images.folder",
                "comfy.managed.port"):
        assert keys[key], key
    assert not keys["web.port"] and not keys["telegram.enabled"]


def test_uncommented_examples_are_valid_settings(tmp_path: Path) -> None:
    """Each commented-out example, once uncommented, is a value the settings accept."""
    text = "\n".join(line[2:] if (m := _TABLE.match(line) or _KEY.match(line)) and m.group(1) else line
                      for line in sample_config().splitlines())
    (tmp_path / "tandava.toml").write_text(text, encoding="utf-8")
    settings = load_settings(tmp_path / "tandava.toml")
    assert settings.web.token.get_secret_value() and settings.telegram.chat_id == 123456789
    assert settings.comfy.managed is not None


def test_a_new_section_is_in_the_sample_at_once() -> None:
    """A section added to the model appears in the sample with its defaults, without touching the sample."""

    class RetentionConfig(BaseModel):
        intermediates_days: int = 14

    class Later(Settings):
        retention: RetentionConfig = Field(default_factory=RetentionConfig)

    text = sample_config(Later)
    assert "[retention]\nintermediates_days = 14" in text
    assert tomllib.loads(text)["retention"] == {"intermediates_days": 14}


def test_readme_configuration_reference_lists_every_key() -> None:
    """The README's configuration table names every key of the model (in backticks)."""
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("| key | default | meaning |"):]
    table = table[:table.index("\n\n")]
    missing = [key for key in model_keys() if f"`{key}`" not in table]
    assert not missing, f"add rows for {missing} to the README's configuration table"
