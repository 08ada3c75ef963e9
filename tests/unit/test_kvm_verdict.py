"""The KVM verdict: probed once, cached per host boot/kernel/QEMU, with reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.host import kvm
from cloudlet.host.kvm import ProbeGuest

GUEST = ProbeGuest(Path("/k"), Path("/i"))


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fake_probe(guest: ProbeGuest, accel: str = "kvm", timeout: float = 0) -> tuple[bool, str]:
        calls.append(accel)
        return False, "a test guest under kvm did not power off within 20 s"

    monkeypatch.setattr(kvm, "run_probe", fake_probe)
    monkeypatch.setattr(kvm, "_cache_key", lambda _versions: "boot-1")
    monkeypatch.setattr(kvm.os, "access", lambda *_: True)
    monkeypatch.setattr(
        kvm.Path, "exists", lambda self: str(self) == "/dev/kvm" or _real_exists(self)
    )
    monkeypatch.delenv("CLOUDLET_ACCEL", raising=False)
    return calls


_real_exists = Path.exists


def test_hanging_kvm_falls_back_to_tcg_and_says_why(tmp_path: Path, probes: list[str]) -> None:
    verdict = kvm.decide(tmp_path / "accel.json", GUEST)
    assert verdict.accel == "tcg"
    assert "opens but KVM does not run guests" in verdict.reason
    assert probes == ["kvm"]


def test_verdict_is_cached_until_the_host_changes(
    tmp_path: Path, probes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "accel.json"
    kvm.decide(cache, GUEST)
    kvm.decide(cache, GUEST)
    assert probes == ["kvm"]
    # rebooted, new kernel or QEMU
    monkeypatch.setattr(kvm, "_cache_key", lambda _versions: "boot-2")
    kvm.decide(cache, GUEST)
    assert probes == ["kvm", "kvm"]


def test_override_by_environment(
    tmp_path: Path, probes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDLET_ACCEL", "tcg")
    verdict = kvm.decide(tmp_path / "accel.json", GUEST)
    assert (verdict.accel, probes) == ("tcg", [])
    assert "CLOUDLET_ACCEL" in verdict.reason
