import pytest

from tale_integrations.core.checks import (
    check_choice,
    check_flag,
    check_int,
    check_number,
    check_positive_int,
    is_int,
    is_number,
)
from tale_integrations.core.errors import DatasetError, TaleError, TaleValueError


@pytest.mark.parametrize("value", [1, 7, 10**9])
def test_positive_int_accepts_and_returns_the_value(value):
    assert check_positive_int("n", value) == value


@pytest.mark.parametrize("value", [0, -3, True, False, 1.0, "3", None])
def test_positive_int_rejects_with_the_name_and_the_value(value):
    with pytest.raises(ValueError, match=rf"^n must be a positive int, got {value!r}$") as info:
        check_positive_int("n", value)
    assert isinstance(info.value, TaleValueError) and isinstance(info.value, TaleError)


def test_optional_allows_none_and_says_so():
    assert check_positive_int("budget", None, optional=True) is None
    with pytest.raises(ValueError, match=r"^budget must be a positive int or None, got 0$"):
        check_positive_int("budget", 0, optional=True)


def test_hint_and_error_class():
    with pytest.raises(DatasetError, match=r"^limit must be a positive int \(questions\), got -1$"):
        check_positive_int("limit", -1, hint=" (questions)", error=DatasetError)


@pytest.mark.parametrize(("kwargs", "value", "message"), [
    ({"low": 0}, -1, "a non-negative int"),
    ({"low": 2}, 1, "an int >= 2"),
    ({"high": 2}, 3, "an int <= 2"),
    ({"low": 1, "high": 9}, 10, "an int from 1 to 9"),
    ({}, "x", "an int"),
])
def test_int_ranges(kwargs, value, message):
    with pytest.raises(ValueError, match=rf"^x must be {message}, got {value!r}$"):
        check_int("x", value, **kwargs)
    ok = kwargs.get("low", kwargs.get("high", 5))
    assert check_int("x", ok, **kwargs) == ok


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "1", None])
def test_number_must_be_finite_and_not_bool(value):
    with pytest.raises(ValueError, match="^t must be a finite number"):
        check_number("t", value)


def test_number_bounds():
    assert check_number("temperature", 0.5, low=0, high=2) == 0.5
    assert check_number("temperature", 2, low=0, high=2) == 2
    with pytest.raises(ValueError, match=r"^temperature must be a number from 0 to 2, got 2.5$"):
        check_number("temperature", 2.5, low=0, high=2)


def test_flag_and_choice():
    assert check_flag("merge", False) is False
    assert check_flag("merge", None, optional=True) is None
    with pytest.raises(ValueError, match=r"^merge must be True or False, got 1$"):
        check_flag("merge", 1)
    assert check_choice("mode", "raise", ("raise", "fallback")) == "raise"
    with pytest.raises(ValueError, match=r"^mode must be one of 'raise', 'fallback', got 'x'$"):
        check_choice("mode", "x", ("raise", "fallback"))


def test_predicates():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(3.5) and is_number(2) and not is_number(False) and not is_number(float("nan"))


def test_an_open_lower_bound():
    assert check_number("beta", 0.1, above=0) == 0.1
    with pytest.raises(ValueError, match=r"^beta must be a positive number, got 0$"):
        check_number("beta", 0, above=0)
    with pytest.raises(ValueError, match=r"^x must be a number > 1 and <= 5, got 1$"):
        check_number("x", 1, above=1, high=5)
    with pytest.raises(ValueError, match=r"^n must be a positive int, got 0$"):
        check_int("n", 0, above=0)
