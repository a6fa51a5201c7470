import stat
from pathlib import Path

import jwt
import pytest

from remote_cache.access_token import TOKEN_ALGORITHM, issue, main

SECRET = "0123456789abcdef" * 4


def test_a_token_names_its_holder_and_expires() -> None:
    claims = jwt.decode(issue(SECRET, "ci-main", days=2, now=1_000_000), SECRET, algorithms=[TOKEN_ALGORITHM],
                        options={"verify_exp": False})
    assert claims == {"sub": "ci-main", "iat": 1_000_000, "exp": 1_000_000 + 2 * 86400}


def test_the_command_writes_the_token_for_its_holder_only(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    assert main(["--secret", str(tmp_path / "secret"), "--subject", "alice", "--out", str(tmp_path / "token")]) == 0
    token = (tmp_path / "token").read_text().strip()
    assert jwt.decode(token, SECRET, algorithms=[TOKEN_ALGORITHM])["sub"] == "alice"
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600


@pytest.mark.parametrize("secret, days, says", [
    ("short", "1", "holds 5 bytes: write a secret of 32 or more"),
    (SECRET, "0", "--days 0: give a positive number of days"),
])
def test_the_command_refuses_saying_what_to_give(tmp_path: Path, capsys, secret, days, says) -> None:
    (tmp_path / "secret").write_text(secret)
    with pytest.raises(SystemExit):
        main(["--secret", str(tmp_path / "secret"), "--subject", "alice", "--days", days])
    assert says in capsys.readouterr().err
