"""The --download directory of backup-tracking and upgrade-tracking, and the backup script's output."""

from __future__ import annotations

import pytest
from invoke.exceptions import Exit

from tasks.tracking.backups import backup_path, download_directory


def test_a_missing_download_directory_is_made(tmp_path):
    directory = tmp_path / "backups" / "prod1"
    assert download_directory(str(directory)) == str(directory)
    assert directory.is_dir()


def test_a_download_directory_that_cannot_be_made_is_refused_before_any_host(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(Exit) as refused:
        download_directory(str(blocker / "backups"))
    assert refused.value.code == 2
    assert f"--download {blocker / 'backups'}: Not a directory" in refused.value.message


def test_the_backup_path_is_the_last_line_the_script_prints():
    assert backup_path("pg_dump: done\n/var/backups/mlflow/mlflow-backup-20261127T0200.tar\n") == "/var/backups/mlflow/mlflow-backup-20261127T0200.tar"
    assert backup_path("") == ""
