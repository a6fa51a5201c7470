import argparse
from pathlib import Path

import pytest
from buildgrid.server.app.settings.parser import load_config

from remote_cache.serve import parse_size, parser, render_config


def test_sizes() -> None:
    assert parse_size("500M") == 500 << 20
    assert parse_size("50G") == 50 << 30
    assert parse_size("1.5 TiB") == int(1.5 * (1 << 40))
    assert parse_size("1024") == 1024
    with pytest.raises(argparse.ArgumentTypeError, match="write e.g. 500M"):
        parse_size("lots")


def test_the_rendered_config_is_one_buildgrid_accepts(tmp_path: Path) -> None:
    args = parser().parse_args(["--data", str(tmp_path / "cache"), "--address", "127.0.0.1:50999",
                                "--max-actions", "1000"])
    (tmp_path / "cache").mkdir()
    config = render_config(args, tmp_path / "buildgrid.yaml")
    settings = load_config(str(config))  # BuildGrid's own parser and schema
    text = config.read_text()
    assert "address: 127.0.0.1:50999" in text
    assert f"path: {tmp_path / 'cache'}" in text
    assert "max-cached-refs: 1000" in text
    # The disk CAS made its folders; the instance is the default one Pants asks for.
    assert (tmp_path / "cache" / "cas" / "objects").is_dir()
    assert settings["instances"][0]["name"] == ""
