"""The README stays true: its configuration table is the one the configuration generates, its
workflow table the one the workflow declarations generate."""

from __future__ import annotations

from stacks import config, config_doc
from stacks.declarations import declared
from tests.conftest import ROOT


def test_readme_configuration_table_matches_the_configuration():
    readme = (ROOT / "README.md").read_text()
    assert config_doc.table() in readme, (
        "README.md's configuration table is stale: paste `python -m stacks.config_doc` into it"
    )


def test_readme_workflow_table_matches_the_declarations():
    readme = (ROOT / "README.md").read_text()
    table = config_doc.workflows_table()
    assert f"{config_doc.WORKFLOWS_BEGIN}\n{table}\n{config_doc.WORKFLOWS_END}" in readme, (
        "README.md's workflow table is stale: run `make docs`"
    )
    for name in declared():
        assert f"| `{name}` |" in table


def test_every_setting_is_documented():
    for setting, doc, cells in config_doc.rows():
        assert doc, setting
        assert len(cells) == len(config_doc.ENVIRONMENTS)


def _models(model=config.EnvConfig):
    yield model
    for info in model.model_fields.values():
        if (section := config.section_of(info.annotation)) is not None:
            yield from _models(section)


def test_every_field_of_every_section_has_a_description():
    # The descriptions are the README's table: a setting without one is undocumented.
    for model in _models():
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
    assert config.FunctionConfig in set(_models())
