"""The named registries' primitive (amc.registry.Registry)."""

import pytest

from amc.errors import AmcError, PolicyError
from amc.registry import Registry


def test_register_get_and_list_in_order():
    reg: Registry[int] = Registry("widget")
    reg.register("b", 2, help="the second")

    @reg.register("a")
    def a():
        """The first line of a's doc.

        More text."""

    assert list(reg) == ["b", "a"] and reg.names() == ["b", "a"] and len(reg) == 2
    assert reg["b"] == 2 and reg.get_or_raise("a") is a and "a" in reg and "c" not in reg
    assert reg.describe() == {"b": "the second", "a": "The first line of a's doc."}
    assert reg.check("b") == "b"


def test_unknown_name_is_one_clear_error_of_the_chosen_kind():
    reg: Registry[int] = Registry("criterion", error=PolicyError)
    reg.register("l1", 1)
    with pytest.raises(PolicyError, match=r"unknown criterion 'l3'; known: l1"):
        reg.get_or_raise("l3")


def test_a_taken_name_needs_replace_and_unregister_removes():
    reg: Registry[int] = Registry("searcher")
    reg.register("x", 1)
    with pytest.raises(AmcError, match="already registered"):
        reg.register("x", 2)
    reg.register("x", 3, replace=True)
    assert reg["x"] == 3
    reg.unregister("x")
    assert "x" not in reg and reg.describe() == {}
    with pytest.raises(AmcError, match="name"):
        reg.register(" bad", 1)
