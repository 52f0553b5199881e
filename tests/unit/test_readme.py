"""The README stays true: its configuration table is the one the configuration generates."""

from __future__ import annotations

from stacks import config_doc
from tests.conftest import ROOT


def test_readme_configuration_table_matches_the_configuration():
    readme = (ROOT / "README.md").read_text()
    assert config_doc.table() in readme, (
        "README.md's configuration table is stale: paste `python -m stacks.config_doc` into it"
    )


def test_every_setting_is_documented():
    for setting, doc, cells in config_doc.rows():
        assert doc, setting
        assert len(cells) == len(config_doc.ENVIRONMENTS)
