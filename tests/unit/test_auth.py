"""Users of the HTTP APIs: the users file, roles, bearer tokens (orderops.http.auth)."""

from __future__ import annotations

import os
import stat

import pytest

from orderops.http.auth import ROLES, User, Users, UsersFileError, add_user, bearer_token, digest, parse, remove_user


def test_a_token_signs_in_its_user_and_nothing_else(tmp_path):
    path = tmp_path / "users"
    ann, lee = add_user(path, "ann", "agent"), add_user(path, "lee", "lead")
    users = Users(path)
    assert users.authenticate(ann) == User("ann", "agent") and users.authenticate(lee) == User("lee", "lead")
    for wrong in (None, "", ann[:-1], ann + "x", digest(ann), "ann"):
        assert users.authenticate(wrong) is None, wrong
    assert ann not in path.read_text(), "the file holds hashes, never tokens"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_roles_are_ordered():
    agent, lead, admin = (User(r, r) for r in ROLES)
    assert agent.may("agent") and not agent.may("lead") and not agent.may("admin")
    assert lead.may("agent") and lead.may("lead") and not lead.may("admin")
    assert all(admin.may(r) for r in ROLES)


def test_changes_to_the_file_apply_without_a_restart(tmp_path):
    path = tmp_path / "users"
    old = add_user(path, "ann", "agent")
    users = Users(path)
    assert users.authenticate(old)
    new = add_user(path, "ann", "lead")  # a rotated token, a new role
    assert users.authenticate(old) is None and users.authenticate(new) == User("ann", "lead")
    assert remove_user(path, "ann") and users.authenticate(new) is None


def test_without_a_usable_file_nobody_gets_in_and_the_reason_is_told(tmp_path):
    assert "ORDEROPS_SUPPORT_USERS_FILE" in Users(None).problem
    missing = Users(tmp_path / "nope")
    assert missing.authenticate("x") is None and "cannot be read" in missing.problem
    broken = tmp_path / "broken"
    token = add_user(broken, "ann", "agent")
    broken.write_text(broken.read_text() + "eve god sha256:" + "0" * 64 + "\n")
    users = Users(broken)
    assert users.authenticate(token) is None and "role 'god'" in users.problem and ":3:" in users.problem


@pytest.mark.parametrize("line, reason", [
    ("ann agent", "expected"), ("ann agent secret-in-clear", "never in clear"),
    ("a/b agent sha256:" + "0" * 64, "user id"), ("ann agent sha256:" + "0" * 63, "64 hex"),
])
def test_bad_lines_are_refused_with_their_number_and_reason(line, reason):
    with pytest.raises(UsersFileError, match=reason):
        parse(f"# header\n{line}\n", "users")


def test_a_user_listed_twice_is_refused():
    line = "ann agent sha256:" + "0" * 64
    with pytest.raises(UsersFileError, match="twice"):
        parse(f"{line}\n{line}\n")


def test_only_bearer_credentials_count():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "abc"):
        assert bearer_token(header) is None, header
