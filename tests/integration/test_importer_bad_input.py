"""Bad input fails the run with its own code and keeps the previous content."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.helpers import apply, config, run, seed, table, tables_left, text_of

BEFORE = [("keep1@x.it", "Keep", 1), ("keep2@x.it", "Keep", 2)]
GOOD = b"email,first_name,points\nnew@x.it,New,3\n"


def _other_key(sshd, kind: str) -> str:
    path = sshd.workdir / f"other_{kind}"
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


CASES = {
    # name: (file name, content or None, host key kind or None, expected code)
    "changed_host_key": ("in.csv", GOOD, "ed25519", "HOST_KEY_MISMATCH"),
    "unknown_host_key": ("in.csv", GOOD, "rsa", "HOST_KEY_UNKNOWN"),
    "missing_file": (None, None, None, "SOURCE_NOT_FOUND"),
    "missing_required_column": ("in.csv", b"first_name,points\nNo Key,3\n", None, "MISSING_REQUIRED_COLUMN"),
    "undecodable": ("in.csv", b"email,first_name\nx@x.it,\xff\xfe\xfa broken\n", None, "SOURCE_UNDECODABLE"),
    "empty_file": ("in.csv", b"", None, "EMPTY_SOURCE"),
    "header_only": ("in.csv", b"email,first_name,points\n", None, "EMPTY_SOURCE"),
    "all_records_bad": ("in.csv", b"email,points\nnot-an-email,1\n", None, "EMPTY_SOURCE"),
    "too_many_rejected": ("in.csv", b"email,points\na@x.it,1\nb@x.it,x\nc@x.it,y\n", None, "ERROR_RATIO_EXCEEDED"),
}
#: The codes that blame the file's content: its run moves it to rejected/.
REJECTED = {"MISSING_REQUIRED_COLUMN", "SOURCE_UNDECODABLE", "EMPTY_SOURCE", "ERROR_RATIO_EXCEEDED"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_its_code_and_keeps_the_data(case, cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite module over a database that holds two contacts
    name, content, key_kind, code = CASES[case]
    tenant = f"bad-{case.replace('_', '-')}"[:40]
    host_key = _other_key(sshd, key_kind) if key_kind else None
    path = f"{tenant}/{name or 'absent.csv'}"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "overwrite", "max_error_ratio": 0.5,
                                 "source": {"path": path}}], host_key=host_key), tmp_path)
    seed(tenant, BEFORE)
    if content is not None:
        sshd.put(path, content)
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-import")

    # Then: the run failed with the code of this fault and a message saying what to do
    assert result["status"] == "failed"
    assert result["error_code"] == code, result["error_message"]
    assert result["error_message"]
    # and the database keeps its previous content, with no shadow table left behind
    assert table(tenant) == {k: (n, p, None) for k, n, p in BEFORE}
    assert tables_left(tenant) == ["contacts"]
    # and the e-mail says so
    mail = smtp.wait_for(lambda m: f"(run {result['id']})" in m["Subject"])
    body = text_of(mail)
    assert code in body
    # and a source whose content failed the run is moved to rejected/ beside it, with its reason, and the
    # e-mail says where; a source failed by anything else (the server's key) is left in place for the next run
    if content is not None and code in REJECTED:
        assert not (sshd.root / path).exists()
        assert (sshd.root / tenant / "rejected" / name).read_bytes() == content
        assert f"Code:    {code}" in (sshd.root / tenant / "rejected" / f"{name}.reason.txt").read_text()
        assert f"moved to {tenant}/rejected/{name}" in body
    elif content is not None:
        assert (sshd.root / path).exists()
        assert "rejected" not in body
