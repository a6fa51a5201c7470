from __future__ import annotations

import pytest

from ml_platform.image import SECRET_ENV, BaseImageRequest, cache_scope_for
from pants.engine.process import ProcessCacheScope
from pants.engine.target import InvalidFieldException


def request(*constraints: str) -> BaseImageRequest:
    return BaseImageRequest("embedded", constraints, "models/m:m")


def test_base_python_satisfying_the_constraints() -> None:
    request("CPython==3.11.*").check_python("3.11.2")
    request("CPython>=3.10,<3.12").check_python("3.11.9")
    request("CPython==3.9.*", "CPython==3.11.*").check_python("3.11.2")  # any of them


def test_base_python_mismatch_names_both() -> None:
    with pytest.raises(InvalidFieldException) as excinfo:
        request("CPython==3.12.*").check_python("3.11.2")
    message = str(excinfo.value)
    assert "models/m:m" in message and "Python 3.11.2" in message and "CPython==3.12.*" in message
    assert "base_image" in message


@pytest.mark.parametrize("secret", SECRET_ENV)
def test_a_process_given_a_secret_is_cached_for_this_run_only(secret: str) -> None:
    # Its environment is part of a cached process's key: a secret there would be written to
    # Pants' cache.
    assert cache_scope_for({"ML_REGISTRY_USERNAME": "u", secret: "s3cret"}) == ProcessCacheScope.PER_SESSION
    assert cache_scope_for({"ML_REGISTRY_USERNAME": "u", secret: ""}) == ProcessCacheScope.SUCCESSFUL
    assert cache_scope_for({"AWS_ACCESS_KEY_ID": "AKIA..."}) == ProcessCacheScope.SUCCESSFUL

