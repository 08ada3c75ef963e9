"""`cloudlet cp` on the fake engine: -r both ways, its hints, --owner and skipped entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudlet.cli import copy_command, main
from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.errors import CloudletError
from cloudlet.spec.document import VMBody
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    e = make_fake_engine(short_tmp / "home")
    e.create("web1", VMBody())
    monkeypatch.setattr(copy_command, "open_engine", lambda: e)
    return e


def cli(*args: str) -> tuple[int, str]:
    """Exit code and stderr as `cloudlet` gives them (one line for a CloudletError)."""
    result = CliRunner().invoke(main.app, list(args))
    error = result.exception
    if isinstance(error, CloudletError):
        return error.exit_code, result.stderr + error.one_line()
    return result.exit_code, result.stderr


def test_cp_r_both_ways(engine: Engine, short_tmp: Path) -> None:
    tree = short_tmp / "site"
    (tree / "css dir").mkdir(parents=True)
    (tree / "index.html").write_text("<p>hi</p>\n")
    (tree / "css dir" / "a b.css").write_text("p {}\n")
    code, err = cli("cp", "-r", str(tree), "web1:~")
    assert code == 0 and "(2 files, 2 directories)" in err, err
    driver = engine.driver
    assert isinstance(driver, FakeDriver)
    fs = driver.guest_fs(engine.show("web1").id)
    assert fs.read("/root/site/css dir/a b.css") == b"p {}\n"
    fs.links["/root/site/evil"] = "/etc/passwd"
    back = short_tmp / "back"
    code, err = cli("cp", "--recursive", "web1:site", str(back))
    assert code == 0 and "skipped 1 entries" in err and "./evil (a symlink)" in err, err
    assert (back / "css dir" / "a b.css").read_text() == "p {}\n"
    assert not (back / "evil").exists()


def test_cp_hints_and_refusals(engine: Engine, short_tmp: Path) -> None:
    code, err = cli("cp", str(short_tmp), "web1:/root/")
    assert code == 2 and "is a directory" in err and "add -r" in err, err
    code, err = cli("cp", "--owner", "root", "web1:/etc/passwd", str(short_tmp / "p"))
    assert code == 2 and "--owner applies to copies into a VM" in err
    code, err = cli("cp", "--owner", "bad user", str(short_tmp), "web1:/root/")
    assert code == 2 and "is not USER or USER:GROUP" in err
    code, err = cli("cp", "-r", str(short_tmp / "absent"), "web1:/root/")
    assert code == 3 and "does not exist on this host" in err
