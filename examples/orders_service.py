"""An orders service as a team already has one, protected by tokenlife in a few lines (marked "tokenlife").

Its own routes and its own lifespan stay as they were: tokenlife's lifespan runs around it, and no route of
tokenlife's sample service (/v1/whoami, ...) appears in it. Run it beside an auth service, with a service
client the auth service knows (README, "Protect your own FastAPI service"):

    TOKENLIFE_AUTH_URL=http://127.0.0.1:8000 TOKENLIFE_SERVICE_CLIENT_ID=orders \\
    TOKENLIFE_SERVICE_CLIENT_SECRET=... uvicorn --app-dir examples orders_service:app --port 8002
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, TypedDict

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from resource_service.protection import Principal, Protection, error_responses

log = logging.getLogger("orders")

tokenlife = Protection()  # tokenlife: settings from the TOKENLIFE_* environment (ResourceSettings)
Reader = Annotated[Principal, Depends(tokenlife.require(["read"]))]  # tokenlife
Writer = Annotated[Principal, Depends(tokenlife.require(["write"]))]  # tokenlife


class Order(BaseModel):
    """One order of one customer."""

    item: str
    quantity: int = 1


class PlacedOrder(Order):
    """An order as the book keeps it."""

    number: int
    owner: str


class Book(TypedDict):
    """What the service's lifespan gives every request (Starlette's lifespan state)."""

    catalogue: list[str]
    orders: list[PlacedOrder]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[Book]:
    """The service's own start-up and shut-down: it loads its catalogue and keeps an order book."""
    catalogue = ["coffee", "tea", "cocoa"]  # a real service would read its database here
    log.info("orders service started with %d items", len(catalogue))
    yield {"catalogue": catalogue, "orders": []}
    log.info("orders service stopped")


app = FastAPI(title="orders", lifespan=lifespan)
tokenlife.install(app)  # tokenlife: its lifespan around ours, the answer gate, RFC 6750 errors
app.add_api_route("/internal/ready", tokenlife.readiness, include_in_schema=False)  # tokenlife
app.add_api_route("/internal/metrics", tokenlife.metrics, include_in_schema=False)  # tokenlife


@app.get("/catalogue")
async def catalogue(request: Request) -> list[str]:
    """Public: what can be ordered."""
    items: list[str] = request.state.catalogue
    return items


@app.get("/orders", responses=error_responses(scoped=True))
async def my_orders(who: Reader, request: Request) -> list[PlacedOrder]:
    """The caller's orders (scope `read`)."""
    orders: list[PlacedOrder] = request.state.orders
    return [order for order in orders if order.owner == who.sub]


@app.post("/orders", status_code=201, responses=error_responses(scoped=True))
async def place_order(order: Order, who: Writer, request: Request) -> PlacedOrder:
    """Place an order (scope `write`)."""
    orders: list[PlacedOrder] = request.state.orders
    placed = PlacedOrder(number=len(orders) + 1, owner=who.sub, **order.model_dump())
    orders.append(placed)
    return placed
