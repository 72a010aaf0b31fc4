"""docs/configuration.md is the CLI's flag reference: it must say what the parser does."""

import os
from pathlib import Path

from keystone_ingest.dev import flagref

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_flag_reference_matches_the_cli():
    assert PAGE.read_text() == flagref.render(), "docs/configuration.md is stale; run: make docs"


def test_every_flag_of_every_command_is_on_the_page():
    page = PAGE.read_text()
    for command in ("serve", "bronze", "load", "replay"):
        assert f"## keystone-ingest {command}\n" in page
    # A few flags and their variables, defaults and meanings, as an operator would look them up.
    assert (
        "| `--memory-limit-bytes` | `KEYSTONE_MEMORY_LIMIT_BYTES` | 1 GiB | resident memory the server stays under"
        in page
    )
    assert "| `--olist-dir` | `KEYSTONE_OLIST_DIR` | required |" in page
    assert "| `--create-topics` | `KEYSTONE_CREATE_TOPICS` | off |" in page


def test_the_environment_does_not_leak_into_the_page(monkeypatch):
    monkeypatch.setenv("KEYSTONE_TOPIC", "somewhere-else")
    assert "| `--topic` | `KEYSTONE_TOPIC` | `orders` |" in flagref.render()
    assert os.environ["KEYSTONE_TOPIC"] == "somewhere-else"


def test_check_mode_names_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text(PAGE.read_text().replace("1 GiB", "2 GiB"))
    assert flagref.main(["--check", str(stale)]) == 1
    assert "does not match the CLI's flags; run: make docs" in capsys.readouterr().err
    assert flagref.main(["--check", str(PAGE)]) == 0
