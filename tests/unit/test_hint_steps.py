"""Hints of the instances, images and spec modules say what to do in words and carry
the action as a NextStep; the CLI alone turns it into its command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudlet.cli import wording
from cloudlet.driver.base import ExecResult
from cloudlet.engine import access
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError, GuestError, InvalidInput, NotFound
from cloudlet.images import catalog, download
from cloudlet.next_steps import Step, step
from cloudlet.spec.document import parse_documents
from cloudlet.spec.process import ProcessSpec
from tests.fakes import make_fake_engine


def words_only(error: CloudletError) -> None:
    """The engine's own text names no command; the CLI's line does."""
    assert "cloudlet" not in error.one_line().replace("cloudlet/v1", "")
    assert "cloudlet " in wording.error_line(error)


def test_a_process_vm_without_a_program_points_at_an_example_run(short_tmp: Path) -> None:
    engine: Engine = make_fake_engine(short_tmp / "home")
    with pytest.raises(InvalidInput) as refused:
        engine.run(ProcessSpec(image="tiny", argv=()), lambda vm: None)
    words_only(refused.value)
    assert refused.value.next_steps == (step(Step.VM_RUN, image="tiny", command="uname -a"),)
    assert wording.error_line(refused.value).endswith("(cloudlet run tiny -- uname -a)")


def test_an_unknown_catalog_image_points_at_the_catalog() -> None:
    with pytest.raises(NotFound) as refused:
        catalog.get_entry("zzzz-none")
    words_only(refused.value)
    assert refused.value.next_steps == (step(Step.IMAGE_CATALOG),)


def test_a_url_that_is_no_download_points_at_an_import() -> None:
    with pytest.raises(InvalidInput) as refused:
        download.fetch_text("file:///etc/passwd")
    words_only(refused.value)
    assert wording.error_line(refused.value).endswith("(cloudlet image import PATH --name IMAGE)")


def test_an_unknown_spec_field_points_at_the_schema() -> None:
    text = "apiVersion: cloudlet/v1\nkind: VM\nmetadata:\n  name: web1\nspec:\n  colour: blue\n"
    with pytest.raises(InvalidInput) as refused:
        parse_documents(text, "f.yaml")
    words_only(refused.value)
    assert refused.value.next_steps == (step(Step.SPEC_SCHEMA),)


class _FailingCloudInit:
    """A driver whose guest reports a failed cloud-init, with its log's tail."""

    def exec(self, instance_id: str, argv: list[str], **_: Any) -> ExecResult:
        if argv[0] == "cloud-init":
            return ExecResult(1)
        return ExecResult(0, b"boom: package not found\n")


def test_a_failed_cloud_init_points_at_its_log_in_the_guest() -> None:
    with pytest.raises(GuestError, match="boom: package not found") as failed:
        access.wait_cloud_init(_FailingCloudInit(), "id1")  # type: ignore[arg-type]
    words_only(failed.value)
    assert failed.value.next_steps == (
        step(Step.VM_EXEC, command="cat /var/log/cloud-init-output.log"),
    )
