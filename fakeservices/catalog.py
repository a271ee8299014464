"""The four fake services: their endpoints, request bodies and business refusals.

Each service has one action (which creates a resource for an order) and at most one
compensation (which undoes every action applied for that order). The table below is the
whole contract the orchestrator's example flow is written against; `state.py` applies it
and `app.py` exposes it over HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sagalab.fakeservices.errors import UnknownServiceError

OrderId = Annotated[str, Field(min_length=1, max_length=200, strict=True)]
Text = Annotated[str, Field(min_length=1, max_length=2000, strict=True)]

#: Quantities above this are refused by inventory with 409 ``out_of_stock``.
MAX_QUANTITY = 1000
#: Amounts above this are refused by payments with 402 ``card_declined``.
MAX_AMOUNT = 10000


class _Body(BaseModel):
    # Extra fields are accepted (an orchestrator may send saga ids) and are part of the
    # idempotency fingerprint, but they are not echoed back.
    model_config = ConfigDict(extra="ignore")


class OrderRef(_Body):
    """Body of every compensation: the business id of the order to undo."""

    order_id: OrderId


class ReservationRequest(_Body):
    """Body of ``POST /inventory/reservations``."""

    order_id: OrderId
    sku: Text
    quantity: Annotated[int, Field(gt=0, strict=True)]


class ChargeRequest(_Body):
    """Body of ``POST /payments/charges``."""

    order_id: OrderId
    amount: int | float
    currency: Annotated[str, Field(min_length=3, max_length=3, strict=True)]

    @field_validator("amount", mode="before")
    @classmethod
    def _positive_number(cls, value: Any) -> Any:
        # Checked by hand so that an int stays an int in the echo and the error reads well.
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise ValueError("amount must be a positive JSON number")
        try:
            # JSON ints have no bound; one past a float's range (a 4000-digit amount) made
            # math.isfinite raise OverflowError, a 500. No payment system takes it: 422.
            finite = math.isfinite(float(value))
        except OverflowError:
            raise ValueError("amount is out of range for a payment") from None
        if not finite or value <= 0:
            raise ValueError("amount must be a positive JSON number")
        return value


class ShipmentRequest(_Body):
    """Body of ``POST /shipping/shipments``; the address may be a string or an object."""

    order_id: OrderId
    address: Text | dict[str, Any]


class MessageRequest(_Body):
    """Body of ``POST /notifications/messages``."""

    order_id: OrderId
    customer_id: Text
    template: Text


@dataclass(frozen=True)
class Refusal:
    """A business refusal: an error answer that applies nothing and is not stored."""

    status: int
    error: str
    message: str


@dataclass(frozen=True)
class ServiceSpec:
    """One fake service: where its endpoints live and how its action behaves."""

    name: str
    action_path: str
    action_model: type[_Body]
    id_field: str
    id_prefix: str
    compensation_path: str | None
    refuse: Callable[[Any], Refusal | None]

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint paths of this service, relative to its prefix."""
        if self.compensation_path is None:
            return (self.action_path,)
        return (self.action_path, self.compensation_path)


def _never(_body: Any) -> Refusal | None:
    return None


def _inventory_refusal(body: ReservationRequest) -> Refusal | None:
    if body.quantity > MAX_QUANTITY:
        return Refusal(
            409,
            "out_of_stock",
            f"only {MAX_QUANTITY} units of {body.sku} can be reserved; asked for {body.quantity}",
        )
    return None


def _payments_refusal(body: ChargeRequest) -> Refusal | None:
    if body.amount > MAX_AMOUNT:
        return Refusal(402, "card_declined", f"charges above {MAX_AMOUNT} are declined")
    return None


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            name="inventory",
            action_path="/reservations",
            action_model=ReservationRequest,
            id_field="reservation_id",
            id_prefix="res",
            compensation_path="/reservations/release",
            refuse=_inventory_refusal,
        ),
        ServiceSpec(
            name="payments",
            action_path="/charges",
            action_model=ChargeRequest,
            id_field="charge_id",
            id_prefix="ch",
            compensation_path="/refunds",
            refuse=_payments_refusal,
        ),
        ServiceSpec(
            name="shipping",
            action_path="/shipments",
            action_model=ShipmentRequest,
            id_field="shipment_id",
            id_prefix="shp",
            compensation_path="/shipments/cancel",
            refuse=_never,
        ),
        ServiceSpec(
            name="notifications",
            action_path="/messages",
            action_model=MessageRequest,
            id_field="message_id",
            id_prefix="msg",
            compensation_path=None,
            refuse=_never,
        ),
    )
}

#: The service names, in the order the example flow calls them.
SERVICE_NAMES: tuple[str, ...] = tuple(SERVICES)


def get_service(name: str) -> ServiceSpec:
    """Return the spec of service `name` or raise :class:`UnknownServiceError`."""
    try:
        return SERVICES[name]
    except KeyError:
        raise UnknownServiceError(name, SERVICE_NAMES) from None


def normalize_endpoint(service: str, endpoint: str) -> str:
    """Return `endpoint` as a path relative to the service prefix, or ``"*"``.

    Accepts ``"charges"``, ``"/charges"`` and ``"/payments/charges"``; raises ``ValueError``
    naming the valid endpoints when the path is not one of the service's endpoints.
    """
    spec = get_service(service)
    text = endpoint.strip()
    if text == "*":
        return text
    path = "/" + text.strip("/")
    prefix = f"/{spec.name}"
    if path.startswith(prefix + "/"):
        path = path[len(prefix) :]
    if path not in spec.endpoints:
        raise ValueError(
            f"{spec.name} has no endpoint {endpoint!r}; use '*' or one of: "
            + ", ".join(spec.endpoints)
        )
    return path
