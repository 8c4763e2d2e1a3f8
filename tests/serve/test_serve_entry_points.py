"""Command-line checks of jobs/serve_app.py and jobs/score_slides.py that need no Ray."""

from __future__ import annotations

import pytest

import jobs.score_slides as score_slides_module
import jobs.serve_app as serve_app_module
from jobs.score_slides import main as score_slides_main
from jobs.serve_app import main as serve_app_main
from tests.serve.conftest import CMU_SLIDE


@pytest.mark.parametrize("main", [serve_app_main, score_slides_main], ids=["serve_app", "score_slides"])
def test_unknown_log_level_is_usage_error(main, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "config.yaml"), "--log-level", "VERBOSE"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error
    assert "invalid choice: 'VERBOSE'" in error


@pytest.mark.parametrize("main", [serve_app_main, score_slides_main], ids=["serve_app", "score_slides"])
def test_log_level_is_case_insensitive(main, tmp_path):
    # The missing config file is reported after the level was accepted, as a config error with status 2.
    assert main(["--config", str(tmp_path / "missing.yaml"), "--log-level", "warning"]) == 2


def test_score_slides_rejects_uri_slides_dir(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "score.yaml"
    config.write_text("model:\n  checkpoint: model.pt\n")
    code = score_slides_main(["--config", str(config), "--slides-dir", "s3://bucket/slides", "--output", "out"])
    assert code == 2
    assert "slides_dir must be a local path" in caplog.text
    assert not (tmp_path / "s3:").exists()
    assert not (tmp_path / "out").exists()


@pytest.fixture
def ray_starts(monkeypatch):
    """Record each call of the jobs' ``init_ray``; the Ray fixture of other tests may already run."""
    calls = []
    for module in (score_slides_module, serve_app_module):
        monkeypatch.setattr(module, "init_ray", lambda *args, **kwargs: calls.append(args))
    return calls


def test_serve_app_rejects_missing_data_root_before_ray(tmp_path, monkeypatch, caplog, ray_starts):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  checkpoint: model.pt\n")

    code = serve_app_main(["--config", "config.yaml", "--data-root", "nowhere/data", "--output-root", "out"])

    assert code == 2
    assert f"data_root {tmp_path / 'nowhere' / 'data'} is not an existing folder" in caplog.text
    assert ray_starts == []


def test_score_slides_rejects_empty_folder(tmp_path, monkeypatch, caplog, ray_starts):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  checkpoint: model.pt\n")
    (tmp_path / "empty").mkdir()
    code = score_slides_main(["--config", "config.yaml", "--slides-dir", "empty", "--output", "out"])
    assert code == 2
    assert f"no slides found in {(tmp_path / 'empty').resolve()} (looked for .bif," in caplog.text
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()
    assert ray_starts == []


def test_score_slides_rejects_bad_manifest_rows(tmp_path, monkeypatch, caplog, ray_starts):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  checkpoint: model.pt\n")
    (tmp_path / "slides.csv").write_text(f"path,slide_id,mpp\n{CMU_SLIDE},cmu,\n../slides/good.svs,g1,abc\n")
    code = score_slides_main(["--config", "config.yaml", "--manifest", "slides.csv", "--output", "out"])
    assert code == 2
    assert "has 1 invalid row(s)" in caplog.text
    assert "line 3: slide ../slides/good.svs: mpp 'abc' is not a positive number" in caplog.text
    assert not (tmp_path / "out").exists()
    assert ray_starts == []
