"""Names, sizes and machine types: the rules users meet first."""

from __future__ import annotations

import pytest

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.machine_types import CATALOG, CUSTOM, get_type, resolve_shape
from cloudlet.spec.names import validate_name
from cloudlet.spec.units import GIB, MIB, format_size, parse_size


@pytest.mark.parametrize("name", ["a", "web1", "db-primary-2", "x" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "1web", "Web1", "web_1", "web.1", "-web", "web-", "x" * 64, "wéb", "a b", "web;rm"]
)
def test_invalid_names_say_the_rule(name: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_name(name)
    assert "lowercase letters" in exc.value.one_line()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1G", GIB),
        ("512M", 512 * MIB),
        ("1.5GiB", GIB + 512 * MIB),
        ("2g", 2 * GIB),
        ("20GB", 20 * GIB),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_bare_number_takes_default_unit() -> None:
    assert parse_size("2048", default_unit="M") == 2048 * MIB


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "1X", "G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(GIB) == "1 GiB"
    assert format_size(512 * MIB) == "512 MiB"
    assert format_size(GIB + 512 * MIB) == "1.5 GiB"


def test_catalog_families_keep_their_ratios() -> None:
    for t in CATALOG.values():
        ratio = t.memory / t.cpus / GIB
        if t.family == "gp":
            assert 0.5 <= ratio <= 4, t
        elif t.family == "mem":
            assert ratio == 8, t
        elif t.family == "cpu":
            assert ratio == 1, t
    for family in ("gp", "mem", "cpu"):
        sizes = {name.split(".")[1] for name in CATALOG if name.startswith(family + ".")}
        assert {"small", "medium", "large"} <= sizes


def test_unknown_type_names_the_closest_or_points_to_types_command() -> None:
    with pytest.raises(NotFound) as exc:
        get_type("gp.smal")
    assert exc.value.hint == "did you mean 'gp.small'?"
    with pytest.raises(NotFound) as exc:
        get_type("zzz")
    assert exc.value.next_steps == (step(Step.TYPE_LIST),)


def test_custom_shape_overrides_type() -> None:
    shape = resolve_shape("gp.small", 3, 3 * GIB)
    assert (shape.name, shape.cpus, shape.memory) == (CUSTOM, 3, 3 * GIB)


def test_type_alone_is_kept() -> None:
    assert resolve_shape("mem.small", None, None) == CATALOG["mem.small"]


@pytest.mark.parametrize(("cpus", "memory"), [(0, GIB), (256, GIB), (1, 64 * MIB), (1, 2048 * GIB)])
def test_shape_out_of_range(cpus: int, memory: int) -> None:
    with pytest.raises(InvalidInput):
        resolve_shape(None, cpus, memory)


def test_instance_spec_rejects_unknown_fields_and_bad_names() -> None:
    with pytest.raises(ValueError):
        InstanceSpec(name="Bad", cpus=1, memory=GIB)
    with pytest.raises(ValueError):
        InstanceSpec.model_validate({"name": "ok", "cpus": 1, "memory": GIB, "colour": "red"})
    spec = InstanceSpec(name="ok", cpus=1, memory=GIB)
    assert InstanceSpec.model_validate_json(spec.model_dump_json()) == spec
