from __future__ import annotations

from pathlib import Path

from ml_serving.reload import ReloadSources, build_overlay


def test_the_overlay_is_the_package_with_the_repository_over_it(tmp_path: Path) -> None:
    package, root = tmp_path / "model.pex", tmp_path / "src"
    for path, text in {"model.py": "old", "artifacts/generated.bin": "g", ".deps/x.whl": "w",
                       "__main__.py": "pex", "PEX-INFO": "{}"}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text)
    for path, text in {"model.py": "new", "artifacts/weights.bin": "w", "__pycache__/model.cpython-311.pyc": ""}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (tmp_path / "work").mkdir()
    overlay = build_overlay(ReloadSources((root,), package), tmp_path / "work")
    files = {str(p.relative_to(overlay)) for p in overlay.rglob("*") if not p.is_dir()}
    assert files == {"model.py", "artifacts/generated.bin", "artifacts/weights.bin"}
    assert (overlay / "model.py").read_text() == "new" and not (overlay / "model.py").is_symlink()
    assert (overlay / "artifacts/weights.bin").resolve() == (root / "artifacts/weights.bin").resolve()


def test_watched_files_change_with_an_edit(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("a")
    sources = ReloadSources((tmp_path,), None, (tmp_path / "requirements.txt",))
    before = sources.files()
    (tmp_path / "requirements.txt").write_text("numpy\n")
    assert set(sources.files()) - set(before) == {tmp_path / "requirements.txt"}
