"""Connections: every path confined under the root, patterns in file names only, the local folder."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paramiko.buffered_pipe import BufferedPipe

from dx.shared.connections import FileInfo, confine, match_names, resolve_secret, split_pattern
from dx.shared.connections.local import LocalRemote
from dx.shared.connections.sftp import _BytesPipe
from dx.shared.errors import ErrorCode

# --- confine ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("in/contacts.csv", "/data/acme/in/contacts.csv"),
    ("/in/contacts.csv", "/data/acme/in/contacts.csv"),
    ("//in//./contacts.csv", "/data/acme/in/contacts.csv"),
    ("in/../contacts.csv", "/data/acme/contacts.csv"),
    ("", "/data/acme"),
])
def test_confine_keeps_a_path_under_the_root(path, expected):
    # Given a relative, absolute or dotted path / When confined to /data/acme / Then it lies under it
    assert confine("/data/acme", path) == expected


@pytest.mark.parametrize("path", ["..", "../globex/contacts.csv", "in/../../x", "/../../etc/passwd",
                                  "../acme-old/contacts.csv"])
def test_confine_refuses_a_path_leaving_the_root(raises_run_error, path):
    # Given a path climbing out of the root (or into a sibling sharing its prefix)
    # When confined / Then PATH_OUTSIDE_ROOT names the path
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT) as info:
        confine("/data/acme", path)
    assert repr(path) in info.value.message


def test_confine_accepts_a_root_written_with_a_trailing_slash():
    # Given a root "/data/acme/" / When a file is confined / Then the root is normalised
    assert confine("/data/acme/", "x.csv") == "/data/acme/x.csv"


# --- patterns ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "expected"), [
    ("in/contacts_*.csv", ("in", "contacts_*.csv")),
    ("contacts_[0-9]?.csv", ("", "contacts_[0-9]?.csv")),
    ("a/b/c.csv", ("a/b", "c.csv")),
])
def test_split_pattern_separates_folder_and_name(pattern, expected):
    # Given a pattern with wildcards in the file name only / When split / Then (folder, name pattern)
    assert split_pattern(pattern) == expected


@pytest.mark.parametrize("pattern", ["in/*/contacts.csv", "2024-??/x.csv", "[ab]/x.csv"])
def test_split_pattern_refuses_wildcards_in_folders(raises_run_error, pattern):
    # Given a wildcard in a folder / When split / Then CONFIG_INVALID explains the rule
    with raises_run_error(ErrorCode.CONFIG_INVALID) as info:
        split_pattern(pattern)
    assert "file name only" in info.value.message


def test_match_names_skips_temporary_and_hidden_files_and_sorts():
    # Given finished files and files still being uploaded or hidden
    names = ["c_2.csv", "c_1.csv", "c_3.csv.part", "c_4.csv.tmp", "c_5.csv.filepart", ".c_6.csv", "notes.txt",
             "C_7.CSV"]
    # When matched against c_*.csv / Then only finished, visible, case-exact matches, sorted
    assert match_names(names, "c_*.csv") == ["c_1.csv", "c_2.csv"]


def test_match_names_never_matches_a_part_file_even_with_a_catch_all_pattern():
    # Given only temporary names / When matched against "*" / Then none
    assert match_names(["a.part", "b.tmp", ".hidden"], "*") == []


# --- LocalRemote ------------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A client's folder: in/ with two CSV files, an upload in progress and a text file."""
    folder = tmp_path / "client"
    (folder / "in").mkdir(parents=True)
    (folder / "in" / "contacts_2.csv").write_text("id\n2\n")
    (folder / "in" / "contacts_1.csv").write_text("id\n1\n")
    (folder / "in" / "contacts_3.csv.part").write_text("id\n")
    (folder / "in" / "readme.txt").write_text("hello")
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the root, holding a file the client space must not reach."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "passwd.csv").write_text("root\n")
    return folder


def test_list_returns_the_matching_files_with_relative_paths(root):
    # Given the client folder / When listed with a pattern
    files = LocalRemote(str(root)).list("in/contacts_*.csv")
    # Then the finished matching files, sorted, with their size and modification time
    assert [(f.path, f.size_bytes) for f in files] == [("in/contacts_1.csv", 5), ("in/contacts_2.csv", 5)]
    assert files[0].mtime == int((root / "in" / "contacts_1.csv").stat().st_mtime)


def test_list_of_a_missing_folder_is_empty(root):
    # Given a pattern in a folder that does not exist / When listed / Then nothing, no error
    assert LocalRemote(str(root)).list("exports/*.csv") == []


def test_stat_describes_a_file_or_says_it_is_absent(root):
    # Given one existing and one missing file / When stat'ed / Then FileInfo, and None
    remote = LocalRemote(str(root))
    mtime = int((root / "in" / "readme.txt").stat().st_mtime)
    assert remote.stat("in/readme.txt") == FileInfo("in/readme.txt", 5, mtime)
    assert remote.stat("in/nothing.csv") is None
    assert remote.stat("in") is None  # a folder is not a source file


def test_fetch_gives_the_file_itself(root, tmp_path):
    # Given an existing file / When fetched / Then its own path (a local source needs no copy)
    fetched = LocalRemote(str(root)).fetch("/in/contacts_1.csv", tmp_path / "staging")
    assert fetched.read_text() == "id\n1\n"
    assert fetched.resolve() == (root / "in" / "contacts_1.csv").resolve()


def test_fetch_of_a_missing_file_is_source_not_found(root, tmp_path, raises_run_error):
    # Given a path to no file / When fetched / Then SOURCE_NOT_FOUND names it
    with raises_run_error(ErrorCode.SOURCE_NOT_FOUND) as info:
        LocalRemote(str(root)).fetch("in/contacts_9.csv", tmp_path / "staging")
    assert "'in/contacts_9.csv'" in info.value.message


def test_fetch_through_dotdot_is_refused(root, outside, tmp_path, raises_run_error):
    # Given a path climbing to a sibling folder / When fetched / Then PATH_OUTSIDE_ROOT
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        LocalRemote(str(root)).fetch("../secrets/passwd.csv", tmp_path / "staging")


@pytest.mark.parametrize("link_is_folder", [False, True], ids=["file-link", "folder-link"])
def test_a_symlink_leaving_the_root_is_refused(root, outside, tmp_path, raises_run_error, link_is_folder):
    # Given a symlink inside the root pointing outside it (to a file, or to a folder)
    if link_is_folder:
        (root / "shared").symlink_to(outside, target_is_directory=True)
        path = "shared/passwd.csv"
    else:
        (root / "in" / "passwd.csv").symlink_to(outside / "passwd.csv")
        path = "in/passwd.csv"
    remote = LocalRemote(str(root))
    # When read through the link / Then PATH_OUTSIDE_ROOT, for fetch and stat alike
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        remote.fetch(path, tmp_path / "staging")
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        remote.stat(path)


def test_a_symlink_staying_inside_the_root_is_followed(root, tmp_path):
    # Given a link to a file of the root / When fetched / Then the target is read
    (root / "latest.csv").symlink_to(root / "in" / "contacts_2.csv")
    assert LocalRemote(str(root)).fetch("latest.csv", tmp_path / "staging").read_text() == "id\n2\n"


def test_list_does_not_offer_a_symlink_leaving_the_root(root, outside):
    # Given a file symlink to outside the root, matching the pattern
    (root / "in" / "contacts_0.csv").symlink_to(outside / "passwd.csv")
    # When listed / Then it is not offered (it could never be fetched)
    paths = [f.path for f in LocalRemote(str(root)).list("in/contacts_*.csv")]
    assert paths == ["in/contacts_1.csv", "in/contacts_2.csv"]


def test_move_creates_the_archive_folder(root):
    # Given a processed file and no archive folder yet
    remote = LocalRemote(str(root))
    # When moved into archive/2024/
    remote.move("in/contacts_1.csv", "archive/2024/contacts_1.csv")
    # Then the folder exists, holds the file, and the source path is gone
    assert (root / "archive" / "2024" / "contacts_1.csv").read_text() == "id\n1\n"
    assert not (root / "in" / "contacts_1.csv").exists()


def test_move_outside_the_root_is_refused(root, raises_run_error):
    # Given a target climbing out of the root / When moved / Then PATH_OUTSIDE_ROOT and nothing moves
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        LocalRemote(str(root)).move("in/contacts_1.csv", "../stolen.csv")
    assert (root / "in" / "contacts_1.csv").exists()


def test_move_through_a_symlinked_folder_leaving_the_root_is_refused(root, outside, raises_run_error):
    # Given an archive folder that is a symlink to outside the root
    (root / "archive").symlink_to(outside, target_is_directory=True)
    # When a file is archived / Then PATH_OUTSIDE_ROOT, and the file stays in the root
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        LocalRemote(str(root)).move("in/contacts_1.csv", "archive/contacts_1.csv")
    assert not (outside / "contacts_1.csv").exists()


def test_remove_deletes_the_file(root):
    # Given a processed file / When removed / Then it is gone and the others remain
    LocalRemote(str(root)).remove("in/contacts_1.csv")
    assert sorted(os.listdir(root / "in")) == ["contacts_2.csv", "contacts_3.csv.part", "readme.txt"]


# --- uploads (local) --------------------------------------------------------------------------------------


def test_a_local_upload_creates_its_folders_and_a_move_replaces_the_final_file(tmp_path):
    # Given a local client space holding an older export under the final name
    remote = LocalRemote(str(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.csv").write_bytes(b"old")
    # When a new file is uploaded under a temporary name in a new folder, then moved over the old one
    remote.upload(io.BytesIO(b"a,b\n1,2\n"), "out/new/.x.csv.part-1")
    remote.move("out/new/.x.csv.part-1", "out/x.csv")
    # Then the final name holds the new bytes and the temporary name is gone
    assert (tmp_path / "out" / "x.csv").read_bytes() == b"a,b\n1,2\n"
    assert list((tmp_path / "out" / "new").iterdir()) == []


def test_an_upload_outside_the_root_is_refused(raises_run_error, tmp_path):
    # Given a path climbing out of the root / When uploaded / Then PATH_OUTSIDE_ROOT and nothing written
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        LocalRemote(str(tmp_path / "root")).upload(io.BytesIO(b"x"), "../escape.csv")
    assert not (tmp_path / "escape.csv").exists()


def test_a_local_place_writes_each_stream_at_its_offset_and_keeps_the_rest(root, outside, raises_run_error):
    # Given a file not there yet
    remote = LocalRemote(str(root))
    # When two pieces are placed out of order, then the head and a longer stale piece, then cut to size
    remote.place("out/all.csv", [(6, io.BytesIO(b"2\n"))])
    remote.place("out/all.csv", [(3, io.BytesIO(b"1\n\n"))])
    remote.place("out/all.csv", [(0, io.BytesIO(b"id\n")), (8, io.BytesIO(b"stale"))], size=8)
    # Then the file holds every piece where it was placed, nothing past the size
    assert (root / "out" / "all.csv").read_bytes() == b"id\n1\n\n2\n"
    # And a path outside the root, or a link there leading out of it, is refused, nothing written outside
    with raises_run_error(ErrorCode.PATH_OUTSIDE_ROOT):
        remote.place("../secrets/leak.csv", [(0, io.BytesIO(b"x"))])
    (root / "out" / "link.csv").symlink_to(outside / "passwd.csv")
    with raises_run_error(ErrorCode.TARGET_WRITE_FAILED):
        remote.place("out/link.csv", [(0, io.BytesIO(b"x"))])
    assert sorted(p.name for p in outside.iterdir()) == ["passwd.csv"]
    assert (outside / "passwd.csv").read_text() == "root\n"


# --- the SFTP channel's buffer ----------------------------------------------------------------------------


#: Bytes of any length up to 3000 (Hypothesis draws short binaries far more often than long ones).
SOME_BYTES = st.builds(lambda n, k: bytes((i * 7 + k) % 256 for i in range(n)), st.integers(1, 3000), st.integers(0, 255))


@given(st.lists(st.one_of(st.tuples(st.just("feed"), SOME_BYTES),
                          st.tuples(st.just("read"), st.integers(min_value=1, max_value=5000))),
                min_size=2, max_size=60))
@settings(max_examples=300, deadline=None)
def test_the_sftp_channel_buffer_reads_what_paramiko_s_own_would(steps):
    # Given paramiko's buffer and dx's, fed the same bytes and read in the same sizes, reads between feeds
    ours, theirs = _BytesPipe(), BufferedPipe()
    for kind, arg in steps:
        if kind == "feed":
            ours.feed(arg)
            theirs.feed(arg)
        elif len(theirs):  # a read of an empty pipe waits for the next feed
            # Then each read gives the same bytes, and the same are left
            assert ours.read(arg) == theirs.read(arg)
        assert len(ours) == len(theirs) and ours.read_ready() == theirs.read_ready()
    assert ours.empty() == theirs.empty()


# --- resolve_secret: the worker's environment, or a mounted Secret -----------------------------------------


def test_a_tenant_secret_is_read_from_the_secrets_folder_each_time(tmp_path, monkeypatch):
    # Given the worker's Secret mounted as files in DX_SECRETS_DIR, the variable itself unset
    monkeypatch.delenv("DX_SECRET_ACME_SFTP_PASSWORD", raising=False)
    monkeypatch.setenv("DX_SECRETS_DIR", str(tmp_path))
    (tmp_path / "DX_SECRET_ACME_SFTP_PASSWORD").write_text("first\n", encoding="utf-8")
    # When the reference is resolved / Then the file gives the value
    assert resolve_secret("${DX_SECRET_ACME_SFTP_PASSWORD}") == "first"
    # and a rotated Secret (Kubernetes rewrites the file) is read at the next use, without a restart
    (tmp_path / "DX_SECRET_ACME_SFTP_PASSWORD").write_text("second", encoding="utf-8")
    assert resolve_secret("${DX_SECRET_ACME_SFTP_PASSWORD}") == "second"


def test_a_tenant_secret_found_nowhere_or_unreadable_is_secret_missing(tmp_path, monkeypatch, raises_run_error):
    # Given an empty secrets folder, then a _FILE variable naming a missing file
    monkeypatch.delenv("DX_SECRET_NOWHERE", raising=False)
    monkeypatch.setenv("DX_SECRETS_DIR", str(tmp_path))
    # When resolved / Then SECRET_MISSING, naming the reference and where it was looked for
    with raises_run_error(ErrorCode.SECRET_MISSING) as info:
        resolve_secret("${DX_SECRET_NOWHERE}")
    assert "${DX_SECRET_NOWHERE}" in str(info.value) and "DX_SECRETS_DIR" in str(info.value)
    monkeypatch.setenv("DX_SECRET_NOWHERE_FILE", str(tmp_path / "gone"))
    with raises_run_error(ErrorCode.SECRET_MISSING) as info:
        resolve_secret("${DX_SECRET_NOWHERE}")
    assert "cannot be read" in str(info.value)


def test_a_worker_refuses_a_local_root_its_platform_does_not_allow(tmp_path, monkeypatch, raises_run_error):
    # Given a local connection stored before DX_LOCAL_ROOTS, rooted outside the allowed folder
    from dx.shared.config import ConnectionCfg
    from dx.shared.connections import open_remote
    from dx.shared.settings import get_settings

    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir(), other.mkdir()
    monkeypatch.setenv("DX_LOCAL_ROOTS", str(allowed))
    get_settings.cache_clear()
    try:
        cfg = ConnectionCfg(id="acme-files", tenant="acme", type="local", root=str(other))
        # When opened by a worker / Then ROOT_NOT_ALLOWED, nothing read
        with raises_run_error(ErrorCode.ROOT_NOT_ALLOWED) as info, open_remote(cfg):
            pass
        assert f"connection acme-files: {other} is not inside" in str(info.value)
        # and inside the allowed folder it opens
        with open_remote(ConnectionCfg(id="ok", tenant="acme", type="local", root=str(allowed / "acme"))) as remote:
            assert remote.list("*.csv") == []
    finally:
        get_settings.cache_clear()
