"""``workflow.evolve``: the state machines' fast ``dataclasses.replace``. Same result, same errors,
and ``replace`` itself wherever a copy of the attributes would not be the same value."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import pytest

from orderops.model.workflow import evolve


@dataclass(frozen=True)
class Plain:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Derived:
    count: int
    double: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", self.count * 2)


@dataclass(frozen=True)
class Cached:
    count: int

    @functools.cached_property
    def squared(self) -> int:
        return self.count ** 2


@dataclass(frozen=True, slots=True)
class Slotted:
    count: int


def test_a_copy_with_the_changes_equal_to_replace_and_the_original_untouched():
    before = Plain("a", 1, ("x",))
    after = evolve(before, count=2)
    assert after == dataclasses.replace(before, count=2) == Plain("a", 2, ("x",))
    assert before == Plain("a", 1, ("x",))
    assert after is not before and hash(after) == hash(Plain("a", 2, ("x",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.count = 3  # type: ignore[misc]


def test_a_name_that_is_not_a_field_is_refused_as_replace_refuses_it():
    with pytest.raises(TypeError):
        evolve(Plain("a"), colour="red")


def test_post_init_cached_properties_and_slots_go_through_replace():
    assert evolve(Derived(2), count=5).double == 10
    cached = Cached(3)
    assert cached.squared == 9
    assert evolve(cached, count=4).squared == 16  # not the copied 9
    assert evolve(Slotted(1), count=2) == Slotted(2)


def test_the_state_machines_states_take_the_fast_path():
    from fulfillment.domain import FulfillmentState
    from order_state.domain import OrderState
    from orderops.model.workflow import _copyable_fields
    from returns.domain import ReturnsState

    for state in (FulfillmentState, OrderState, ReturnsState):
        assert _copyable_fields(state) is not None, state
