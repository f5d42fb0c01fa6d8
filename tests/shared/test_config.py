"""``parse_config``: the YAML of ``dx apply``, every problem reported at once with its path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dx.shared.config import FieldCfg, Known, parse_config
from dx.shared.errors import ConfigError
from dx.shared.hosts import TrustedHosts

VALID_YAML = """
tenants:
  - id: acme
    notify: [ops@acme.example]
  - id: globex
connections:
  - id: acme-sftp
    tenant: acme
    type: sftp
    root: /exports
    host: sftp.acme.example
    username: dx
    password: "${DX_SECRET_ACME_SFTP_PASSWORD}"
    host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl
  - id: globex-files
    tenant: globex
    type: local
    root: /srv/globex
databases:
  - id: contacts
    tenant: acme
    primary_key: email
    fields:
      email: email
      age: int
      born: {type: date, format: "%d/%m/%Y"}
      name: {type: text, max_length: 100, required: true}
modules:
  - id: acme-contacts
    tenant: acme
    kind: importer
    database: contacts
    mode: upsert
    source:
      connection: acme-sftp
      path: daily/contacts_*.csv
      delimiter: ";"
      encoding: latin1
"""


#: The platform's DX_LOCAL_ROOTS for the base configuration's local connection (root /srv/globex).
BASE_LOCAL_ROOTS = [Path("/srv")]


def config_with(*changes: Callable[[dict[str, Any]], object]) -> str:
    """VALID_YAML with each change applied to its parsed form, as YAML text again."""
    raw = yaml.safe_load(VALID_YAML)
    for change in changes:
        change(raw)
    return yaml.dump(raw, Dumper=_NoAliases)


class _NoAliases(yaml.SafeDumper):
    """Writes a value shared by two places twice, as a person would (dx refuses aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def problems_of(text: str, known: Known | None = None) -> list[str]:
    """The problems parse_config reports; fails the test if it accepts the text."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, known)
    return info.value.problems


def module(raw: dict[str, Any]) -> dict[str, Any]:
    return raw["modules"][0]


def source(raw: dict[str, Any]) -> dict[str, Any]:
    return raw["modules"][0]["source"]


def test_a_valid_full_configuration_parses():
    # Given the full YAML of two tenants, an sftp and a local connection, a database, an importer
    # When it is parsed
    cfg = parse_config(VALID_YAML)
    # Then every section is there, secrets stay references and shorthands are expanded
    assert [t.id for t in cfg.tenants] == ["acme", "globex"]
    sftp = cfg.connections[0]
    assert (sftp.type, sftp.port, sftp.password) == ("sftp", 22, "${DX_SECRET_ACME_SFTP_PASSWORD}")
    fields = cfg.databases[0].fields
    assert fields["email"] == FieldCfg(type="email")
    assert fields["age"] == FieldCfg(type="int")
    assert fields["born"] == FieldCfg(type="date", format="%d/%m/%Y")
    assert fields["name"].required and fields["name"].max_length == 100
    src = cfg.modules[0].source
    assert src is not None
    assert (src.delimiter, src.encoding, src.header, src.after) == (";", "latin-1", True, "archive")


def test_an_empty_document_is_an_empty_configuration():
    # Given an empty file / When parsed / Then nothing is configured, and nothing is wrong
    cfg = parse_config("")
    assert (cfg.tenants, cfg.connections, cfg.databases, cfg.modules) == ([], [], [], [])


def test_a_problem_names_its_path_in_the_file():
    # Given a two-character delimiter in the first module's source
    text = config_with(lambda raw: source(raw).update(delimiter=";;"))
    # When parsed / Then the one problem names modules[0].source.delimiter
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("modules[0].source.delimiter: ")


def test_every_problem_is_reported_at_once():
    # Given three mistakes in three sections
    text = config_with(
        lambda raw: source(raw).update(delimiter=";;"),
        lambda raw: raw["connections"][0].update(port=0),
        lambda raw: raw["databases"][0]["fields"].update(age="integer"),
    )
    # When parsed
    problems = problems_of(text)
    # Then all three are reported together, each with its own path
    assert sorted(p.split(":")[0] for p in problems) == [
        "connections[0].port", "databases[0].fields.age.type", "modules[0].source.delimiter"]


def test_schema_and_reference_problems_are_reported_together():
    # Given a bad delimiter AND a module of a tenant that does not exist
    text = config_with(lambda raw: source(raw).update(delimiter=";;"),
                       lambda raw: raw["databases"][0].update(tenant="initech"))
    # When parsed
    problems = problems_of(text)
    # Then both are reported in the same run of `dx apply`
    paths = {p.split(":")[0] for p in problems}
    assert {"modules[0].source.delimiter", "databases[0].tenant"} <= paths


def test_a_reference_to_an_invalid_item_is_not_called_dangling():
    # Given a connection with a schema mistake, which the module refers to
    text = config_with(lambda raw: raw["connections"][0].update(port="twenty-two"))
    # When parsed / Then only the schema mistake is reported, not an "unknown connection"
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith("connections[0].port: "), problems


def test_reference_problems_name_the_item_by_its_place_in_the_file():
    # Given a first module with a schema mistake and a second one naming a missing database
    def two_modules(raw):
        second = {**raw["modules"][0], "id": "second", "database": "nope"}
        raw["modules"][0]["kind"] = "teleporter"
        raw["modules"].append(second)

    problems = problems_of(config_with(two_modules))
    # Then the missing database is reported at modules[1], where it is in the file
    assert any(p.startswith("modules[0].kind: ") for p in problems), problems
    assert any(p.startswith("modules[1].database: no database 'nope'") for p in problems), problems


@pytest.mark.parametrize("field", ["password", "passphrase", "private_key"])
@pytest.mark.parametrize("value", ["hunter2", "${ACME_PASSWORD}x", "$ACME_PASSWORD"])
def test_a_secret_written_in_clear_is_rejected(field: str, value: str):
    # Given a secret that is not exactly a ${DX_SECRET_NAME} reference
    text = config_with(lambda raw: raw["connections"][0].update({field: value}))
    # When parsed / Then the secret is refused, saying how to write it
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith(f"connections[0].{field}: ")
    assert "${DX_SECRET_NAME}" in problems[0]
    assert value not in problems[0], "the message must not echo the secret"


@pytest.mark.parametrize("field", ["password", "passphrase", "private_key"])
@pytest.mark.parametrize("name", ["DX_DATABASE_URL", "DX_BROKER_URL", "AWS_SECRET_ACCESS_KEY", "HOME",
                                  "ACME_SFTP_PASSWORD", "DX_SECRETS_X", "dx_secret_acme"])
def test_a_secret_reference_outside_the_tenant_secret_prefix_is_refused(field: str, name: str):
    # Given a reference to a variable of the workers that is no tenant secret (the platform's own
    # credentials among them), or one that only looks like the prefix
    text = config_with(lambda raw: raw["connections"][0].update({field: f"${{{name}}}"}))
    # When parsed / Then it is refused, naming the field and saying which variables may be named
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"connections[0].{field}: ${{{name}}} is not a tenant secret: ")
    assert "starting with DX_SECRET_" in problems[0] and "set on every worker" in problems[0]


@pytest.mark.parametrize("host", ["db.acme.example", "db_1.internal.", "10.1.2.3", "2001:db8::1", "127.1"])
def test_a_host_name_or_address_is_accepted(host: str):
    # Given a connection whose host is a name or an address (the system's short forms too)
    text = config_with(lambda raw: raw["connections"][0].update(host=host))
    # When parsed (no platform check) / Then it is kept as written
    assert parse_config(text).connections[0].host == host


@pytest.mark.parametrize("host", ["/var/run/postgresql", "a.example,127.0.0.1", "db.example:5432", "user@db",
                                  "[::1]", "db example", ""])
def test_a_host_that_is_no_name_nor_address_is_refused(host: str):
    # Given a host that is a socket path, a list, or carries a port, user or space
    # (libpq reads a path as a local socket and a comma as several hosts)
    text = config_with(lambda raw: raw["connections"][0].update(host=host))
    # When parsed / Then it is refused, naming the field
    problems = problems_of(text)
    assert any(p.startswith("connections[0].host: ") for p in problems), problems


@pytest.mark.parametrize(("changes", "problem"), [
    ({"host": "127.0.0.1"}, "connections[0].host: 127.0.0.1 is a loopback address: tenant connections reach "
                            "public addresses only; if it really is the client's server, the platform's operator "
                            "must list it in DX_TRUSTED_HOSTS"),
    ({"host": "169.254.169.254"}, "connections[0].host: 169.254.169.254 is a link-local address: "),
    ({"host": "10.9.8.7"}, "connections[0].host: 10.9.8.7 is a private address: "),
    ({"host": "100.64.0.1"}, "connections[0].host: 100.64.0.1 is a shared (carrier-grade NAT) address: "),
    ({"host": "0.0.0.0"}, "connections[0].host: 0.0.0.0 is an unspecified address: "),
    ({"host": "::1"}, "connections[0].host: ::1 is a loopback address: "),
    ({"host": "fd12::1"}, "connections[0].host: fd12::1 is a private address: "),
    ({"host": "::ffff:127.0.0.1"}, "connections[0].host: ::ffff:127.0.0.1 is a loopback address: "),
    ({"host": "2130706433"}, "connections[0].host: 2130706433 is a loopback address: "),
    ({"sslmode": "disable"}, "connections[2].sslmode: disable may send the password and the rows in clear, which "
                             "only a host the platform trusts may receive; leave sslmode out (verify-full)"),
    ({"sslmode": "prefer"}, "connections[2].sslmode: prefer may send the password"),
    ({"sslmode": "allow", "host": "8.8.4.4"}, "connections[2].sslmode: allow may send the password"),
])
def test_dx_apply_refuses_an_internal_address_or_a_clear_text_database_the_platform_does_not_trust(changes,
                                                                                                     problem):
    # Given an sftp connection (host, connections[0]) or a postgres one (sslmode, connections[2]) with one change;
    # the platform trusts 10.0.0.0/24 only
    trusted, _ = TrustedHosts.parse("10.0.0.0/24")

    def change(raw: dict[str, Any]) -> None:
        raw["connections"].append(dict(PG_CONNECTION))
        target = raw["connections"][2 if "sslmode" in changes else 0]
        target.update(changes)
    # When parsed as `dx apply` does, with the platform's trusted hosts
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(change), trusted=trusted, local_roots=BASE_LOCAL_ROOTS)
    # Then the connection is refused, naming its field and what to do
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    assert len(info.value.problems) == 1, info.value.problems


@pytest.mark.parametrize("changes", [
    {"host": "10.0.0.9"},                               # in a trusted network
    {"host": "db.acme.example"},                         # a name: the worker resolves and checks it
    {"host": "sftp.internal"},                           # a trusted name
    {"host": "8.8.8.8"},                                 # public
    {"sslmode": "disable", "host": "10.0.0.5"},          # clear text, to a trusted network
    {"sslmode": "prefer", "host": "SFTP.internal."},     # clear text, to a trusted name
    {"sslmode": "require"},                              # TLS without checking the certificate: the tenant's choice
])
def test_dx_apply_accepts_public_and_trusted_hosts(changes):
    # Given the platform trusts 10.0.0.0/24 and sftp.internal
    trusted, _ = TrustedHosts.parse("10.0.0.0/24, sftp.internal")

    def change(raw: dict[str, Any]) -> None:
        raw["connections"].append(dict(PG_CONNECTION))
        raw["connections"][2 if "sslmode" in changes else 0].update(changes)
    # When parsed with them / Then it is accepted
    assert parse_config(config_with(change), trusted=trusted, local_roots=BASE_LOCAL_ROOTS).connections


def test_a_client_database_requires_tls_with_a_verified_certificate_by_default():
    # Given a postgres connection without sslmode / When parsed / Then its sslmode is verify-full
    def change(raw: dict[str, Any]) -> None:
        raw["connections"].append(dict(PG_CONNECTION))
    assert parse_config(config_with(change)).connections[2].sslmode == "verify-full"


@pytest.mark.parametrize(("change", "path"), [
    (lambda raw: raw.update(modulez=[]), "modulez"),
    (lambda raw: module(raw).update(colour="red"), "modules[0].colour"),
    (lambda raw: source(raw).update(delimeter=","), "modules[0].source.delimeter"),
    (lambda raw: raw["databases"][0]["fields"].update(age={"type": "int", "requried": True}),
     "databases[0].fields.age.requried"),
])
def test_an_unknown_key_is_rejected(change: Callable[[dict[str, Any]], object], path: str):
    # Given a misspelt or unknown key
    text = config_with(change)
    # When parsed / Then it is reported at its path as an unknown key
    assert problems_of(text) == [f"{path}: unknown key (check its spelling)"]


def test_a_module_cannot_read_through_a_connection_of_another_tenant():
    # Given acme's module reading through globex's connection
    text = config_with(lambda raw: source(raw).update(connection="globex-files"))
    # When parsed / Then the reference is refused, naming both tenants
    assert problems_of(text) == [
        "modules[0].source.connection: 'globex-files' belongs to tenant 'globex', not 'acme'"]


def test_a_connection_already_applied_for_another_tenant_is_refused_too():
    # Given only acme's module, and a connection known from a previous apply for globex
    text = config_with(lambda raw: raw.update(connections=[]),
                       lambda raw: source(raw).update(connection="globex-files"))
    known = Known(tenants=frozenset({"globex"}), connections=(("globex-files", "globex"),))
    # When parsed against what is known / Then the tenant mismatch is found
    problems = problems_of(text, known)
    assert problems == ["modules[0].source.connection: 'globex-files' belongs to tenant 'globex', not 'acme'"]


def test_an_unknown_tenant_is_rejected():
    # Given a database of a tenant defined nowhere
    text = config_with(lambda raw: raw["databases"][0].update(tenant="initech"))
    # When parsed
    problems = problems_of(text)
    # Then the tenant is named, and so is the module's now dangling database
    assert "databases[0].tenant: unknown tenant 'initech'" in problems
    assert "modules[0].database: no database 'contacts' for tenant 'acme'" in problems


def test_a_tenant_known_from_a_previous_apply_may_be_referenced():
    # Given a configuration without its tenants section, the tenants being already applied
    text = config_with(lambda raw: raw.pop("tenants"))
    # When parsed with and without that knowledge
    cfg = parse_config(text, Known(tenants=frozenset({"acme", "globex"})))
    # Then it is valid only when the tenants are known
    assert cfg.tenants == []
    assert len(problems_of(text)) == 4  # two connections, one database, one module


@pytest.mark.parametrize(("section", "duplicate"), [
    ("tenants", {"id": "acme"}),
    ("connections", {"id": "globex-files", "tenant": "acme", "type": "local", "root": "/srv/acme"}),
    ("databases", {"id": "contacts", "tenant": "acme", "primary_key": "id", "fields": {"id": "text"}}),
])
def test_an_id_defined_twice_is_rejected(section: str, duplicate: dict[str, Any]):
    # Given a second item reusing an id of its section
    text = config_with(lambda raw: raw[section].append(duplicate))
    # When parsed / Then the second occurrence is reported
    index = len(yaml.safe_load(text)[section]) - 1
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{section}[{index}].id: ")
    assert "defined twice" in problems[0]


def test_a_database_id_may_be_reused_by_another_tenant():
    # Given globex defining a database with acme's database id
    text = config_with(lambda raw: raw["databases"].append(
        {"id": "contacts", "tenant": "globex", "primary_key": "id", "fields": {"id": "text"}}))
    # When parsed / Then both databases exist
    assert [(d.tenant, d.id) for d in parse_config(text).databases] == [("acme", "contacts"), ("globex", "contacts")]


def test_a_source_without_header_needs_its_columns():
    # Given a source declaring no header line and no column names
    text = config_with(lambda raw: source(raw).update(header=False))
    # When parsed / Then the source is refused, saying what to add
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("modules[0].source: ")
    assert "columns" in problems[0]


def test_a_source_without_header_but_with_columns_is_valid():
    # Given a headerless source listing its columns / When parsed / Then the columns are kept in order
    text = config_with(lambda raw: source(raw).update(header=False, columns=["email", "age"]))
    src = parse_config(text).modules[0].source
    assert src is not None and src.columns == ["email", "age"]


@pytest.mark.parametrize(("written", "normalised"), [
    ("latin1", "latin-1"), ("ISO-8859-1", "latin-1"), ("windows-1252", "cp1252"), ("CP1252", "cp1252"),
    ("UTF8", "utf-8"), ("utf-8-sig", "utf-8"),
])
def test_encodings_are_normalised(written: str, normalised: str):
    # Given an encoding spelt one of the accepted ways / When parsed / Then it has its one canonical name
    src = parse_config(config_with(lambda raw: source(raw).update(encoding=written))).modules[0].source
    assert src is not None and src.encoding == normalised


def test_an_unsupported_encoding_is_rejected():
    # Given an encoding DataExchange does not read / When parsed / Then the supported ones are listed
    problems = problems_of(config_with(lambda raw: source(raw).update(encoding="ebcdic")))
    assert len(problems) == 1
    assert problems[0].startswith("modules[0].source.encoding: unsupported encoding 'ebcdic'")
    assert "windows-1252" in problems[0]


def test_an_sftp_connection_without_pinned_host_key_is_rejected():
    # Given an sftp connection whose host key is not pinned
    text = config_with(lambda raw: raw["connections"][0].pop("host_key"))
    # When parsed / Then the problem names what is missing and how to obtain it
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("connections[0]: an sftp connection needs host_key")
    assert "ssh-keyscan" in problems[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("tenants: [", "not valid YAML"),
    ("- just\n- a list\n", "(top level): expected a mapping"),
])
def test_a_document_that_is_not_a_mapping_is_one_clear_problem(text: str, expected: str):
    # Given broken YAML, or YAML that is not a mapping / When parsed / Then one problem says so
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


# --- displacer and exporter -------------------------------------------------------------------------------


def export_module(**fields: Any) -> Callable[[dict[str, Any]], object]:
    """A change adding a second module, of an export kind, to VALID_YAML."""
    def change(raw: dict[str, Any]) -> None:
        raw["modules"].append({"id": "acme-out", "tenant": "acme", "database": "contacts", **fields})
    return change


def test_a_displacer_and_an_exporter_parse_with_their_targets():
    # Given a gzip CSV Displacer with fields and a filter, and an XML summary Exporter
    text = config_with(
        export_module(kind="displacer", fields=["email", "age"], filter=[{"field": "age", "op": "ge", "value": 18}],
                      timezone="Europe/Rome", target={"connection": "acme-sftp", "compression": "gzip",
                                                      "path": "out/contacts_{date:%Y%m%d}.csv.gz", "manifest": True}),
        lambda raw: raw["modules"].append({"id": "acme-stats", "tenant": "acme", "kind": "exporter",
                                           "database": "contacts", "events": "summary",
                                           "target": {"connection": "acme-sftp", "path": "out/s.xml",
                                                      "format": "xml", "encoding": "cp1252"}}))
    # When parsed / Then both are there with their settings
    displacer, exporter = parse_config(text).modules[1:]
    assert displacer.target is not None and exporter.target is not None
    assert (displacer.fields, displacer.filter[0].op, displacer.target.compression) == (["email", "age"], "ge", "gzip")
    assert (exporter.events, exporter.target.format, exporter.target.encoding) == ("summary", "xml", "cp1252")


@pytest.mark.parametrize(("fields", "path", "message"), [
    ({"kind": "displacer"}, "modules[1]", "kind displacer needs a target"),
    ({"kind": "exporter", "mode": "upsert", "target": {"connection": "acme-sftp", "path": "x.csv"}},
     "modules[1]", "kind exporter takes a target, not a source or mode"),
    ({"kind": "exporter", "fields": ["email"], "target": {"connection": "acme-sftp", "path": "x.csv"}},
     "modules[1]", "fields and filter belong to a displacer"),
    ({"kind": "displacer", "target": {"connection": "acme-sftp", "path": "out/{date.year}.csv"}},
     "modules[1].target.path", "only {date:FORMAT}, {run} and {module}"),
    ({"kind": "displacer", "target": {"connection": "acme-sftp", "path": "x.csv", "encoding": "utf-16"}},
     "modules[1].target.encoding", "unsupported encoding"),
    ({"kind": "displacer", "filter": [{"field": "age", "op": "in", "value": 3}],
      "target": {"connection": "acme-sftp", "path": "x.csv"}}, "modules[1].filter[0]", "non-empty list"),
    ({"kind": "displacer", "timezone": "Europe/Atlantis", "target": {"connection": "acme-sftp", "path": "x.csv"}},
     "modules[1].timezone", "unknown time zone"),
    ({"kind": "displacer", "fields": ["email", "shoe_size"], "target": {"connection": "acme-sftp", "path": "x.csv"}},
     "modules[1].fields[1]", "'shoe_size' is not a field"),
    ({"kind": "displacer", "target": {"connection": "nowhere", "path": "x.csv"}},
     "modules[1].target.connection", "unknown connection"),
    ({"kind": "importer", "mode": "append", "source": {"connection": "acme-sftp", "path": "x.csv"},
      "target": {"connection": "acme-sftp", "path": "y.csv"}}, "modules[1]", "only a displacer or exporter"),
])
def test_an_export_module_mistake_is_named_by_its_path(fields, path, message):
    # Given an export module with one mistake / When parsed / Then the problem names its path and says why
    problems = problems_of(config_with(export_module(**fields)))
    assert any(p.startswith(f"{path}: ") and message in p for p in problems), problems


# --- XML and postgres sources ------------------------------------------------------------------------------

PG_CONNECTION = {"id": "acme-crm", "tenant": "acme", "type": "postgres", "host": "db.acme.example",
                 "dbname": "crm", "username": "dx_reader", "password": "${DX_SECRET_ACME_CRM_PASSWORD}"}


def _source(**source: Any) -> Callable[[dict[str, Any]], object]:
    def change(raw: dict[str, Any]) -> None:
        raw["connections"].append(dict(PG_CONNECTION))
        raw["modules"][0]["source"] = source
    return change


def test_xml_and_postgres_sources_parse_with_their_options():
    # Given an XML source for an updater and a postgres table source with a watermark
    def change(raw: dict[str, Any]) -> None:
        raw["connections"].append(dict(PG_CONNECTION))
        raw["modules"].append({"id": "acme-xml", "tenant": "acme", "kind": "updater", "database": "contacts",
                               "operation_field": "action",
                               "source": {"connection": "acme-sftp", "path": "in/*.xml", "format": "xml",
                                          "record_element": "CONTACT", "action_attribute": "OP"}})
        raw["modules"][0]["source"] = {"connection": "acme-crm", "table": "crm.contacts", "watermark": "changed_at",
                                       "timeout_s": 60}
    # When parsed
    cfg = parse_config(config_with(change))
    # Then the options are kept, a postgres connection's port defaults to 5432
    pg, xml = cfg.modules[0].source, cfg.modules[1].source
    assert pg is not None and xml is not None
    assert (pg.table, pg.watermark, pg.timeout_s, pg.is_query) == ("crm.contacts", "changed_at", 60, True)
    assert (xml.format, xml.record_element, xml.action_attribute, xml.is_query) == ("xml", "CONTACT", "OP", False)
    assert cfg.connections[2].port == 5432


@pytest.mark.parametrize("change, problem", [
    (_source(connection="acme-sftp", path="in/a.xml", format="xml", delimiter=";"),
     "modules[0].source: delimiter: not an option of format xml"),
    (_source(connection="acme-sftp", path="in/a.xml", format="xml", encoding="latin-1"),
     "modules[0].source: encoding: not an option of format xml (the XML declaration names the encoding)"),
    (_source(connection="acme-sftp", path="in/a.csv", record_element="ROW"),
     "modules[0].source: record_element: not an option of format csv"),
    (_source(connection="acme-sftp", path="in/a.xml", format="xml", action_attribute="ACTION"),
     "modules[0]: source.action_attribute: only an updater reads each record's operation"),
    (_source(connection="acme-crm", table="crm.contacts", query="SELECT 1"),
     "modules[0].source: give table or query, not both"),
    (_source(connection="acme-crm", table="crm.contacts", path="in/a.csv"),
     "modules[0].source: path: a table or query source does not take these"),
    (_source(connection="acme-crm", path="in/a.csv"),
     "modules[0].source: connection 'acme-crm' is a postgres connection: give table or query instead of path"),
    (_source(connection="acme-sftp", table="contacts"),
     "modules[0].source: table and query need a postgres or mysql connection; 'acme-sftp' is sftp"),
    (_source(connection="acme-sftp", path="in/a.csv", watermark="changed_at"),
     "modules[0].source: watermark: only a table or query source (postgres connection) takes these"),
    (_source(connection="acme-crm", table='crm."contacts"'),
     "modules[0].source.table: String should match pattern"),
    (_source(connection="acme-crm"),
     "modules[0].source: a source needs path (a file) or table/query (a postgres connection)"),
])
def test_source_mistakes_are_named_by_their_path(change, problem):
    # Given a source option that does not fit its format or connection
    # When parsed / Then the problem names the source
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(change))
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_a_watermark_does_not_go_with_overwrite_and_postgres_connections_need_their_fields():
    # Given an overwrite with a watermark, and a postgres connection without dbname nor secret
    def change(raw: dict[str, Any]) -> None:
        raw["connections"].append({k: v for k, v in PG_CONNECTION.items() if k not in ("dbname", "password")})
        raw["modules"][0]["mode"] = "overwrite"
        raw["modules"][0]["source"] = {"connection": "acme-crm", "table": "contacts", "watermark": "changed_at"}
    # When parsed
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(change))
    # Then both are named
    assert any(p.startswith("modules[0]: source.watermark: an overwrite") for p in info.value.problems)
    assert "connections[2]: a postgres connection needs dbname, password (password: a ${DX_SECRET_NAME} reference)" \
        in info.value.problems


def test_a_postgres_connection_known_from_a_previous_apply_is_checked_too():
    # Given a module reading a path through a postgres connection applied earlier
    def change(raw: dict[str, Any]) -> None:
        raw["modules"][0]["source"] = {"connection": "old-crm", "path": "in/a.csv"}
    known = Known(tenants=frozenset({"acme"}), connections=(("old-crm", "acme"),),
                  connection_types=(("old-crm", "postgres"),))
    # When parsed / Then the cross-check knows its type
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(change), known)
    assert info.value.problems == ["modules[0].source: connection 'old-crm' is a postgres connection: "
                                   "give table or query instead of path"]


def test_a_stored_source_reads_back_the_same():
    # Given parsed postgres and XML sources, dumped as the catalog stores them
    cfg = parse_config(config_with(_source(connection="acme-crm", query="SELECT * FROM crm.contacts")))
    stored = cfg.modules[0].model_dump(mode="json")
    # When validated again (every default now explicit) / Then nothing is refused
    assert type(cfg.modules[0]).model_validate(stored) == cfg.modules[0]
    assert type(cfg.connections[2]).model_validate(cfg.connections[2].model_dump()) == cfg.connections[2]


def _field(name: str, spec: dict[str, Any]) -> Callable[[dict[str, Any]], object]:
    return lambda raw: raw["databases"][0]["fields"].__setitem__(name, spec)


def test_a_date_field_takes_a_list_of_formats_and_a_bool_its_own_words():
    # Given a date field with two formats and a bool field with the client's words
    text = config_with(_field("born", {"type": "date", "format": ["%d/%m/%Y", "%Y-%m-%d"]}),
                       _field("vip", {"type": "bool", "true_values": ["si"], "false_values": ["no"]}))
    # When parsed / Then both are kept; the first format is the one an export writes
    fields = parse_config(text).databases[0].fields
    assert (fields["born"].formats, fields["born"].output_format) == (["%d/%m/%Y", "%Y-%m-%d"], "%d/%m/%Y")
    assert (fields["vip"].true_values, fields["vip"].false_values) == (["si"], ["no"])


@pytest.mark.parametrize(("spec", "says"), [
    ({"type": "text", "format": "%d/%m/%Y"}, "only a date or timestamp field takes one"),
    ({"type": "date", "format": []}, "give at least one format"),
    ({"type": "int", "true_values": ["si"]}, "only a bool field takes them"),
    ({"type": "bool", "true_values": ["Si", "1"], "false_values": [" si ", "0"]}, "a word must mean one thing"),
])
def test_value_options_that_do_not_fit_the_field_are_refused_with_its_path(spec, says):
    # Given a field whose options do not fit its type / When parsed / Then refused, naming the field
    problems = problems_of(config_with(_field("odd", spec)))
    assert any(p.startswith("databases[0].fields.odd") and says in p for p in problems), problems


def test_an_alias_bomb_is_refused_at_once_without_expanding():
    # Given a few hundred bytes of YAML whose aliases would expand to billions of items
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    # When parsed / Then refused as YAML, naming aliases
    problems = problems_of(bomb)
    assert len(problems) == 1 and "aliases (*name) are not accepted" in problems[0]


def test_a_key_given_twice_is_refused_not_silently_overwritten():
    # Given a tenant mapping with notify twice / When parsed / Then refused, naming the key
    problems = problems_of("tenants:\n  - id: acme\n    notify: [a@acme.example]\n    notify: [b@acme.example]\n")
    assert len(problems) == 1 and "key 'notify' is given twice" in problems[0]


def test_a_configuration_over_the_size_cap_is_refused_before_parsing():
    # Given a file just over the cap / When parsed / Then refused with what to do
    problems = problems_of("#" * (4 * 1024 * 1024 + 1))
    assert "larger than 4 MiB" in problems[0]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_numbers_must_be_finite(value):
    # Given settle_s of infinity or NaN / When parsed / Then refused with its path
    problems = problems_of(config_with(lambda raw: source(raw).__setitem__("settle_s", yaml.safe_load(value))))
    assert any(p.startswith("modules[0].source.settle_s") for p in problems), problems


@pytest.mark.parametrize("address", ["ops@acme.example\r\nBcc: x@evil.example", "two words@acme.example",
                                     "no-at-sign", "a@b", "x@acme.example, y@acme.example"])
def test_notify_addresses_must_each_be_one_address(address):
    # Given a recipient that is not one address / When parsed / Then refused with its path
    problems = problems_of(config_with(lambda raw: raw["tenants"][0].__setitem__("notify", [address])))
    assert any(p.startswith("tenants[0].notify[0]") for p in problems), problems


@pytest.mark.parametrize(("change", "path", "says"), [
    (lambda raw: source(raw).update(path="/etc/passwd"), "modules[0].source.path", "relative to the connection's root"),
    (lambda raw: source(raw).update(path="daily/../../x.csv"), "modules[0].source.path", ".. is not accepted"),
    (lambda raw: source(raw).update(path="daily/a\tb.csv"), "modules[0].source.path", "control characters"),
    (lambda raw: source(raw).update(path="*/contacts.csv"), "modules[0].source", "wildcards are allowed in the file name"),
    (lambda raw: source(raw).update(archive_dir="/archive"), "modules[0].source.archive_dir", "relative"),
    (lambda raw: source(raw).update(archive_dir="../archive"), "modules[0].source.archive_dir", ".."),
    (lambda raw: source(raw).update(rejected_dir="../../rejected"), "modules[0].source.rejected_dir", ".."),
    (lambda raw: source(raw).update(rejected_dir=""), "modules[0].source.rejected_dir", "at least 1"),
])
def test_paths_that_would_leave_the_connection_root_are_refused_at_apply(change, path, says):
    # Given a source path, archive or rejected folder that is absolute, climbs with .., or is otherwise unusable
    # When applied / Then a problem names the option and says why
    [problem] = problems_of(config_with(change))
    assert problem.startswith(f"{path}:") and says in problem, problem


@pytest.mark.parametrize("target", ["/out/people.csv", "../people.csv", "out/{date:../%Y}/people.csv",
                                    "{date:/%Y}/people.csv"])
def test_a_target_path_that_would_leave_the_root_is_refused_even_through_its_date_format(target):
    def displacer(raw: dict[str, Any]) -> None:
        raw["modules"].append({"id": "acme-out", "tenant": "acme", "kind": "displacer", "database": "contacts",
                               "target": {"connection": "acme-sftp", "path": target}})
    # When a displacer writing there is applied / Then its target path is refused
    [problem] = problems_of(config_with(displacer))
    assert problem.startswith("modules[1].target.path:"), problem


@pytest.mark.parametrize(("change", "path"), [
    (lambda raw: module(raw).update(chunk_bytes=1 << 41), "modules[0].chunk_bytes"),
    (lambda raw: module(raw).update(schedule={"cron": ["0 2 * * *"], "misfire_grace_s": 1e12}),
     "modules[0].schedule.misfire_grace_s"),
    (lambda raw: module(raw).update(schedule={"cron": ["0 2 * * *"], "max_failures": 2**31}),
     "modules[0].schedule.max_failures"),
    (lambda raw: raw["connections"][0].update(timeout_s=1e300), "connections[0].timeout_s"),
    (lambda raw: source(raw).update(settle_s=1e300), "modules[0].source.settle_s"),
    (lambda raw: raw["databases"][0]["fields"]["name"].update(max_length=10**20), "databases[0].fields.name.max_length"),
])
def test_numbers_past_what_the_system_can_use_are_refused_at_apply(change, path):
    # Given a number larger than a timer, PostgreSQL's int or a worker can take (on main: crashes later, at run time)
    # When applied / Then it is refused, naming the option
    [problem] = problems_of(config_with(change))
    assert problem.startswith(f"{path}:") and "less than or equal" in problem, problem


def test_a_chunk_below_the_workers_floor_is_refused_and_the_floor_is_a_setting():
    text = config_with(lambda raw: module(raw).update(chunk_bytes=4096))
    # When applied with the default floor (1 MiB) / Then refused, naming DX_MIN_CHUNK_BYTES
    [problem] = problems_of(text)
    assert problem.startswith("modules[0].chunk_bytes: 4096 is below") and "DX_MIN_CHUNK_BYTES" in problem
    # and with a floor the operator lowered, accepted
    assert parse_config(text, min_chunk_bytes=1024).modules[0].chunk_bytes == 4096


@pytest.mark.parametrize(("text", "says"), [
    (VALID_YAML.replace("path: daily/contacts_*.csv", 'path: "daily/contacts\\0_*.csv"'), "NUL characters"),
    (VALID_YAML.replace("  - id: globex\n", '  - id: globex\n    notify: ["x\\ud800@globex.example"]\n'),
     "lone surrogate"),
])
def test_text_the_control_database_cannot_store_is_refused_with_its_path(text, says):
    # Given YAML escapes that make a NUL or a lone surrogate (on main: accepted, then PostgreSQL fails the apply)
    # When applied / Then one problem names where
    [problem] = problems_of(text)
    assert says in problem and problem.startswith(("modules[0].source.path:", "tenants[1].notify[0]:")), problem


@pytest.mark.parametrize("text", ["[x]: 1\n", "? {a: 1}\n: 2\n", "a: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_yaml_that_python_cannot_hold_is_a_config_error_not_a_crash(text):
    # Given a list as a key, a mapping as a key, lists nested 5000 deep (on main: TypeError, RecursionError)
    # When applied / Then a ConfigError says the YAML is not valid
    [problem] = problems_of(text)
    assert problem.startswith("not valid YAML"), problem


@pytest.mark.parametrize(("text", "says"), [
    ("modules: [{id: m, schedule: {cron: ['0 2 * * *'], start: 2026-02-30}}]\n", "is not a valid date or time"),
    ("connections: [{id: c, tenant: acme, type: [postgres]}]\n", "connections[0].type"),
])
def test_values_found_by_fuzzing_are_config_errors_not_crashes(text, says):
    # Given a date that does not exist, a list as a connection's type (on main: ValueError, TypeError)
    # When applied / Then ConfigError names the problem
    assert any(says in p for p in problems_of(text))


def test_a_file_over_the_size_cap_is_refused_after_reading_no_more_than_the_cap(tmp_path, monkeypatch):
    # Given a 64 MiB file (sparse) and a read that records how much it was asked for
    from dx.shared import config as config_module

    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    asked: list[int] = []

    class Recording:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> Recording:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def read(self, n: int = -1) -> bytes:
            asked.append(n)
            return bytes(self.fh.read(n))

    monkeypatch.setattr(config_module, "open", lambda *a, **k: Recording(open(*a, **k)), raising=False)
    # When read / Then refused, naming the file, after asking for no more than the cap and one byte
    with pytest.raises(ConfigError) as info:
        config_module.read_config_file(path)
    assert "huge.yaml: the configuration is larger than 4 MiB" in info.value.problems[0]
    assert asked == [config_module.MAX_CONFIG_BYTES + 1]


def test_a_config_file_that_is_not_utf8_is_refused_with_where(tmp_path):
    from dx.shared.config import read_config_file

    path = tmp_path / "latin1.yaml"
    path.write_bytes("tenants: [{id: caf\xe9}]\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert info.value.problems == [f"{path}: not UTF-8 text (byte 18)"]


@pytest.mark.parametrize(("root", "allowed", "refused"), [
    ("/", [], True),                                     # no DX_LOCAL_ROOTS: no local connection
    ("/srv/acme", ["/srv/dx-files"], True),              # beside an allowed folder
    ("/srv/dx-files-evil", ["/srv/dx-files"], True),     # a prefix is not a parent
    ("/srv/dx-files/../../etc", ["/srv/dx-files"], True),
    ("/srv/dx-files", ["/srv/dx-files"], False),
    ("/srv/dx-files/acme", ["/srv/other", "/srv/dx-files"], False),
])
def test_a_local_connection_must_stay_in_a_folder_the_platform_allows(root, allowed, refused):
    # Given a local connection with this root, and the platform's DX_LOCAL_ROOTS
    trusted, _ = TrustedHosts.parse("")

    def change(raw: dict[str, Any]) -> None:
        raw["connections"][1]["root"] = root  # the base's local connection

    # When parsed as `dx apply` does
    if not refused:
        parse_config(config_with(change), trusted=trusted, local_roots=[Path(a) for a in allowed])
        return
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(change), trusted=trusted, local_roots=[Path(a) for a in allowed])
    # Then refused, naming the field, the allowed folders and what to do
    assert info.value.problems == [
        f"connections[1].root: {root} is not inside a folder the platform lets tenants use (DX_LOCAL_ROOTS: "
        f"{', '.join(allowed) or 'unset: no folder'}); the platform's operator lists it, or use an sftp connection"]
