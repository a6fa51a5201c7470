from __future__ import annotations

import pytest

from ml_platform.image import BaseImageRequest
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
