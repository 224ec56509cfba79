"""What users build: Event, Identify and Revenue, and how each becomes Amplitude's wire fields.

The wire shapes match what the official Python SDK (amplitude-analytics) sends for the same call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._checks import is_int, is_number
from ._errors import InvalidEventError, brief

IDENTIFY_EVENT = "$identify"
GROUP_IDENTIFY_EVENT = "$groupidentify"
REVENUE_EVENT = "revenue_amount"
UNSET_VALUE = "-"

OP_SET = "$set"
OP_SET_ONCE = "$setOnce"
OP_ADD = "$add"
OP_APPEND = "$append"
OP_PREPEND = "$prepend"
OP_PRE_INSERT = "$preInsert"
OP_POST_INSERT = "$postInsert"
OP_REMOVE = "$remove"
OP_UNSET = "$unset"
OP_CLEAR_ALL = "$clearAll"


class Event:
    """One analytics event: an event type plus any Amplitude event fields.

    `Event("signup", user_id="user-42", event_properties={"plan": "pro"})`. Field names are the
    keyword names of `Amplitude.track`; `product_id` and `revenue_type` go out as `productId`
    and `revenueType`.
    """

    __slots__ = ("event_type", "fields")

    def __init__(self, event_type: str, **fields: Any) -> None:
        self.event_type = event_type
        self.fields: dict[str, Any] = fields

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"Event({self.event_type!r}{', ' if shown else ''}{shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.event_type, self.fields) == (other.event_type, other.fields)

    __hash__ = None  # type: ignore[assignment]


class Identify:
    """User (or group) property operations, with the official SDK's rules.

    Each property key may be used by one operation only; nothing may follow `clear_all()`;
    `add` needs a number. Breaking a rule raises InvalidEventError at once (the official SDK
    logs and ignores it instead).
    """

    __slots__ = ("_keys", "_operations")

    def __init__(self) -> None:
        self._operations: dict[str, Any] = {}
        self._keys: set[str] = set()

    @property
    def user_properties(self) -> dict[str, Any]:
        """The operations as they go on the wire, e.g. `{"$set": {"plan": "pro"}}`."""
        return {op: dict(v) if isinstance(v, dict) else v for op, v in self._operations.items()}

    def is_empty(self) -> bool:
        return not self._operations

    def set(self, key: str, value: Any) -> Identify:
        return self._add(OP_SET, key, value)

    def set_once(self, key: str, value: Any) -> Identify:
        return self._add(OP_SET_ONCE, key, value)

    def add(self, key: str, value: int | float) -> Identify:
        if not is_number(value):
            raise InvalidEventError(f"Identify.add({brief(key)}): value must be a number, "
                                    f"got {type(value).__name__}")
        return self._add(OP_ADD, key, value)

    def append(self, key: str, value: Any) -> Identify:
        return self._add(OP_APPEND, key, value)

    def prepend(self, key: str, value: Any) -> Identify:
        return self._add(OP_PREPEND, key, value)

    def pre_insert(self, key: str, value: Any) -> Identify:
        return self._add(OP_PRE_INSERT, key, value)

    def post_insert(self, key: str, value: Any) -> Identify:
        return self._add(OP_POST_INSERT, key, value)

    def remove(self, key: str, value: Any) -> Identify:
        return self._add(OP_REMOVE, key, value)

    def unset(self, key: str) -> Identify:
        return self._add(OP_UNSET, key, UNSET_VALUE)

    def clear_all(self) -> Identify:
        """Clear every user property (irreversible); replaces the operations added so far."""
        self._operations = {OP_CLEAR_ALL: UNSET_VALUE}
        self._keys.clear()
        return self

    def _add(self, operation: str, key: str, value: Any) -> Identify:
        name = f"Identify.{_OPERATION_METHODS[operation]}"
        if OP_CLEAR_ALL in self._operations:
            raise InvalidEventError(f"{name}({brief(key)}): no operation may follow clear_all()")
        if not isinstance(key, str) or not key:
            raise InvalidEventError(f"{name}: key must be a non-empty string, got {brief(key)}")
        if key in self._keys:
            raise InvalidEventError(f"{name}({brief(key)}): key already has an operation in this "
                                    "Identify (one operation per key)")
        if value is None:
            raise InvalidEventError(f"{name}({brief(key)}): value must not be None (use unset())")
        self._operations.setdefault(operation, {})[key] = value
        self._keys.add(key)
        return self


_OPERATION_METHODS = {
    OP_SET: "set", OP_SET_ONCE: "set_once", OP_ADD: "add", OP_APPEND: "append",
    OP_PREPEND: "prepend", OP_PRE_INSERT: "pre_insert", OP_POST_INSERT: "post_insert",
    OP_REMOVE: "remove", OP_UNSET: "unset",
}


class Revenue:
    """A purchase, sent as a `revenue_amount` event with `$`-prefixed event properties."""

    __slots__ = ("currency", "price", "product_id", "properties", "quantity", "receipt",
                 "receipt_sig", "revenue", "revenue_type")

    def __init__(
        self,
        price: float,
        quantity: int = 1,
        product_id: str | None = None,
        revenue_type: str | None = None,
        receipt: str | None = None,
        receipt_sig: str | None = None,
        properties: Mapping[str, Any] | None = None,
        revenue: float | None = None,
        currency: str | None = None,
    ) -> None:
        self.price = price
        self.quantity = quantity
        self.product_id = product_id
        self.revenue_type = revenue_type
        self.receipt = receipt
        self.receipt_sig = receipt_sig
        self.properties = properties
        self.revenue = revenue
        self.currency = currency

    def set_receipt(self, receipt: str, receipt_signature: str) -> Revenue:
        self.receipt = receipt
        self.receipt_sig = receipt_signature
        return self

    def event_properties(self) -> dict[str, Any]:
        """The event properties as the official SDK sends them (None values are left out)."""
        if not is_number(self.price):
            raise InvalidEventError(
                f"Revenue.price: must be a number, got {brief(self.price)}")
        if not is_int(self.quantity):
            raise InvalidEventError(
                f"Revenue.quantity: must be an integer, got {brief(self.quantity)}")
        if self.properties is not None and not isinstance(self.properties, Mapping):
            raise InvalidEventError("Revenue.properties: must be a mapping")
        props: dict[str, Any] = dict(self.properties or {})
        props.update({
            "$productId": self.product_id, "$quantity": self.quantity, "$price": self.price,
            "$revenueType": self.revenue_type, "$receipt": self.receipt,
            "$receiptSig": self.receipt_sig, "$revenue": self.revenue, "$currency": self.currency,
        })
        return {key: value for key, value in props.items() if value is not None}


def check_identify(identify: Any, method: str) -> None:
    if not isinstance(identify, Identify):
        raise InvalidEventError(f"{method}: identify must be amp_lite.Identify, "
                                f"got {type(identify).__name__}")
    if identify.is_empty():
        raise InvalidEventError(f"{method}: the Identify has no operations")


def check_group(group_type: Any, group_name: Any) -> None:
    if not isinstance(group_type, str) or not group_type:
        raise InvalidEventError(f"group_type: must be a non-empty string, got {brief(group_type)}")
    names = group_name if isinstance(group_name, list) else [group_name]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidEventError("group_name: must be a non-empty string or a list of them, "
                                f"got {brief(group_name)}")
