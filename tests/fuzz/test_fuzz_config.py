"""``dx apply``'s parser on any text and on the valid configuration with any value put anywhere:
a configuration whose stored form reads back the same, or a ConfigError listing problems; nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.config import SECTIONS, Config, parse_config
from dx.shared.errors import ConfigError
from tests.fuzz.strategies import FUZZ, json_values, nasty_text, scalars
from tests.shared.test_config import VALID_YAML

pytestmark = pytest.mark.timeout(120)
#: The valid configuration, with a schedule, and a displacer with a target, filter and fields.
BASE: dict[str, Any] = yaml.safe_load(VALID_YAML)
BASE["modules"][0]["schedule"] = {"cron": ["0 2 * * *"], "timezone": "Europe/Rome", "start": "2026-12-01"}
BASE["modules"].append({"id": "acme-out", "tenant": "acme", "kind": "displacer", "database": "contacts",
                        "target": {"connection": "acme-sftp", "path": "out/people_{date:%Y%m%d}.csv"},
                        "fields": ["email", "age"], "filter": [{"field": "age", "op": "ge", "value": 18}]})


def _accepted_or_refused(text: str) -> Config | None:
    """Parse; a ConfigError must list problems as text. The accepted configuration is returned."""
    try:
        return parse_config(text, min_chunk_bytes=1)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems), exc.problems
        return None


def _stored_form_reads_back(cfg: Config) -> None:
    """What `dx apply` stores (each item's JSON, in PostgreSQL's jsonb: UTF-8 without NUL) validates again to the
    same item: a run's snapshot and the console read it so."""
    for section, model in SECTIONS.items():
        for item in getattr(cfg, section):
            stored = json.dumps(item.model_dump(mode="json"), allow_nan=False)
            assert "\\u0000" not in stored
            stored.encode("utf-8")
            assert model.model_validate(json.loads(stored)) == item


@settings(FUZZ, max_examples=200)
@given(text=st.one_of(st.text(max_size=300), nasty_text,
                      st.lists(st.sampled_from(["tenants:", "modules:", "- ", "id: a", "{", "}", "[", "]", ": ",
                                                "&a ", "*a", "!!python/object:os.system", "\n", "  ", '"\\0"',
                                                '"\\ud800"', "? ", "---", "...", "%YAML 1.1", "<<: ", "1e999",
                                                "0x7fffffffffffffffff", ".nan", "2026-02-30"]),
                               max_size=40).map("".join)))
def test_any_text_is_a_configuration_or_a_config_error(text):
    cfg = _accepted_or_refused(text)
    if cfg is not None:
        _stored_form_reads_back(cfg)


def _paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place of a value in a YAML document: keys of mappings, indexes of lists."""
    out = [at]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*at, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*at, i))
    return out


PLACES = [p for p in _paths(BASE) if p]


@settings(FUZZ, max_examples=120)
@given(changes=st.lists(st.tuples(st.sampled_from(PLACES), json_values(), st.booleans()), min_size=1, max_size=3),
       extra_key=st.one_of(st.none(), st.tuples(st.sampled_from(PLACES), nasty_text, scalars)))
def test_the_valid_configuration_with_any_value_anywhere_is_applied_or_refused(changes, extra_key):
    # Given the valid configuration with values replaced (or their key removed), and maybe a key added
    doc = json.loads(json.dumps(BASE))
    for place, value, remove in changes:
        parent = doc
        try:
            for step in place[:-1]:
                parent = parent[step]
            if remove and isinstance(parent, dict):
                parent.pop(place[-1], None)
            else:
                parent[place[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced the way there
    if extra_key is not None:
        place, key, value = extra_key
        target = doc
        for step in place:
            target = target[step] if isinstance(target, dict | list) and _has(target, step) else None
        if isinstance(target, dict):
            target[key] = value
    text = yaml.dump(doc, Dumper=_NoAliases, allow_unicode=False)
    # When applied / Then it is a configuration whose stored form reads back, or a ConfigError
    cfg = _accepted_or_refused(text)
    if cfg is not None:
        _stored_form_reads_back(cfg)


def _has(container: dict[Any, Any] | list[Any], step: Any) -> bool:
    if isinstance(container, dict):
        return step in container
    return isinstance(step, int) and 0 <= step < len(container)


class _NoAliases(yaml.SafeDumper):
    """Writes a value shared by two places twice (dx refuses aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
