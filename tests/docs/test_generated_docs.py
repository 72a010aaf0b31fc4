"""The documents generated from the code must say what the code does:
docs/configuration.md (every flag) and the Bronze columns in docs/data-contract.md."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from keystone_ingest.dev import docgen

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(docgen.PAGES))
def test_the_generated_page_matches_the_code(name):
    page = (DOCS / name).read_text()
    assert page == docgen.PAGES[name](page), f"docs/{name} is stale; run: make docs"


def test_every_flag_of_every_command_is_on_the_page():
    page = (DOCS / "configuration.md").read_text()
    for command in ("serve", "bronze", "load", "replay"):
        assert f"## keystone-ingest {command}\n" in page
    # A few flags and their variables, defaults and meanings, as an operator would look them up.
    assert (
        "| `--memory-limit-bytes` | `KEYSTONE_MEMORY_LIMIT_BYTES` | 1 GiB | resident memory the server stays under"
        in page
    )
    assert "| `--olist-dir` | `KEYSTONE_OLIST_DIR` | required |" in page
    assert "| `--create-topics` | `KEYSTONE_CREATE_TOPICS` | off |" in page


def test_the_environment_does_not_leak_into_the_flag_reference(monkeypatch):
    monkeypatch.setenv("KEYSTONE_TOPIC", "somewhere-else")
    assert "| `--topic` | `KEYSTONE_TOPIC` | `orders` |" in docgen.render_configuration("")
    assert os.environ["KEYSTONE_TOPIC"] == "somewhere-else"


def test_the_data_contract_lists_the_columns_bronze_files_really_have(tmp_path):
    from keystone_ingest.server.bronze.layout import SCHEMAS

    page = (DOCS / "data-contract.md").read_text()
    for table, schema in SCHEMAS.items():
        path = tmp_path / f"{table}.parquet"
        pq.write_table(schema.empty_table(), path)
        section = page.split(f"### {table}\n", 1)[1].split("###", 1)[0]
        documented = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
        assert documented == pq.read_schema(path).names, table
    assert "| `price` | decimal128(12, 2) |" in page
    assert "| `order_purchase_timestamp` | timestamp[us, tz=UTC] |" in page


def test_check_mode_names_a_stale_page(tmp_path, capsys):
    for name in docgen.PAGES:
        (tmp_path / name).write_text((DOCS / name).read_text())
    assert docgen.main(["--check", str(tmp_path)]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(stale.read_text().replace("1 GiB", "2 GiB"))
    assert docgen.main(["--check", str(tmp_path)]) == 1
    assert f"{stale} do(es) not match the code; run: make docs" in capsys.readouterr().err
    assert docgen.main([str(tmp_path)]) == 0
    assert stale.read_text() == (DOCS / "configuration.md").read_text()
