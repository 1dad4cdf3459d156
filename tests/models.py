"""The models the test suite shares (model class names are unique per app, as in Realm)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import tidesync


class Address(tidesync.EmbeddedModel):
    street: str
    city: str


class Technician(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    name: str


class WorkOrder(tidesync.Model):
    _id: tidesync.ObjectId = tidesync.field(primary_key=True, default_factory=tidesync.ObjectId)
    title: str = tidesync.field(indexed=True)
    status: str = "open"
    priority: int = 0
    cost: Decimal | None = None
    due: datetime | None = None
    tags: list[str] = tidesync.field(default_factory=list)
    labels: set[str] = tidesync.field(default_factory=set)
    notes: dict[str, str] = tidesync.field(default_factory=dict)
    visits: tidesync.Counter = tidesync.field(default_factory=tidesync.Counter)
    site: Address | None = None
    technician: Technician | None = None
    helpers: list[Technician] = tidesync.field(default_factory=list)
    extra: tidesync.Mixed = None


class Gadget(tidesync.Model):
    """Every scalar type once."""

    _id: int = tidesync.field(primary_key=True)
    flag: bool = False
    ratio: float = 0.0
    blob: bytes = b""
    uid: UUID | None = None
    oid: tidesync.ObjectId | None = None
    amount: Decimal | None = None
    when: datetime | None = None
    name: str = ""


class Ticket(tidesync.Model):
    """A model that declares the partition field, as Device Sync apps often did."""

    _id: str = tidesync.field(primary_key=True)
    _partition: str | None = None
    text: str = ""
