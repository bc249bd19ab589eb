"""Kubernetes resource quantities ("500m", "8", "64Gi") without the Kubernetes client."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
            "P": Decimal(10**15), "E": Decimal(10**18)}


def parse_quantity(value: str | int | float) -> Decimal:
    """The numeric value of a quantity; raises ValueError on malformed input."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value).strip()
    if not text:
        raise ValueError("empty quantity")
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return _number(text[: -len(suffix)], value) * factor
    if text[-1] in _DECIMAL and not text[-1].isdigit():
        # "1e3" is an exponent, not a suffix; "E" alone is exa
        return _number(text[:-1], value) * _DECIMAL[text[-1]]
    return _number(text, value)


def _number(text: str, original: object) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation as err:
        raise ValueError(f"invalid quantity {original!r}") from err
    if not number.is_finite():
        raise ValueError(f"invalid quantity {original!r}")
    return number


def to_milli(value: str | int | float) -> int:
    """CPU-style quantity in milli-units ("1.5" -> 1500, "250m" -> 250)."""
    return int((parse_quantity(value) * 1000).to_integral_value())


def to_mib(value: str | int | float) -> int:
    """Memory-style quantity in MiB, rounded down."""
    return int(parse_quantity(value) // (2**20))


def to_int(value: str | int | float) -> int:
    """Integer count (extended resources such as ``nvidia.com/gpu``), rounded down."""
    return int(parse_quantity(value))
