"""Budgets: create, read, update, delete, and their live status."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import AfterValidator, AnyHttpUrl, Field, TypeAdapter, ValidationError, computed_field
from sqlalchemy.exc import IntegrityError

from nullspend.attribution import (
    MAX_TAG_VALUE,
    RESERVED_TAG_PREFIX,
    TAG_KEY_PATTERN,
    tag_entity_errors,
)
from nullspend.errors import ErrorCode
from nullspend.policy.budgets import Policy, remaining
from nullspend.policy.periods import ResetInterval
from nullspend.policy.velocity import MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS
from nullspend_server import budgets
from nullspend_server.api.schema import ApiModel, CustomerId, Data, Microdollars, RequestModel
from nullspend_server.auth import Admin, Session, Viewer, WriteSession
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.db.tables import utcnow
from nullspend_server.errors import ApiError

router = APIRouter(tags=["budgets"])


def _distinct(percentages: list[int]) -> list[int]:
    if len(set(percentages)) != len(percentages):
        raise ValueError("thresholdPercentages must be distinct")
    return sorted(percentages)


_URL = r"https?://[!-~]+"
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def _valid_upgrade_url(url: str) -> str:
    # Kept as given, not normalised: a URL parser would percent-encode the {customer_id}
    # placeholder that denials fill in, so it is the filled-in URL that must parse.
    if re.fullmatch(_URL, url) is None:
        raise ValueError("upgradeUrl must be an http(s) URL of printable ASCII without spaces")
    try:
        _HTTP_URL.validate_python(url.replace("{customer_id}", "customer"))
    except ValidationError:
        raise ValueError(f"upgradeUrl {url!r} is not a valid http(s) URL") from None
    return url


def _valid_tag_entity(entity_id: str) -> str:
    if errors := tag_entity_errors(entity_id):
        raise ValueError("; ".join(errors))
    return entity_id


def _unchanged_if_omitted(**kwargs: Any) -> Any:
    """A setting that may be omitted but not null (its column always has a value). Only set
    fields are applied; a factory keeps the placeholder None out of the schema's defaults."""
    return Field(default_factory=lambda: None, **kwargs)


Percentages = Annotated[
    list[Annotated[int, Field(strict=True, ge=1, le=100)]],
    AfterValidator(_distinct),
    Field(json_schema_extra={"uniqueItems": True}),
]
Seconds = Annotated[int, Field(strict=True, ge=MIN_WINDOW_SECONDS, le=MAX_WINDOW_SECONDS)]
PositiveMicrodollars = Annotated[Microdollars, Field(gt=0)]
UpgradeUrl = Annotated[
    str,
    Field(max_length=2000, json_schema_extra={"pattern": f"^{_URL}$"}),
    AfterValidator(_valid_upgrade_url),
]
ObjectId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
TagEntity = Annotated[
    str,
    AfterValidator(_valid_tag_entity),
    Field(
        json_schema_extra={
            "pattern": f"^(?!{RESERVED_TAG_PREFIX}){TAG_KEY_PATTERN}=[^\\x00]{{0,{MAX_TAG_VALUE}}}$"
        }
    ),
]


class BudgetSettings(RequestModel):
    """On creation an omitted setting takes its default: policy strict_block, resetInterval
    monthly, thresholdPercentages [50, 80, 90, 95], windowSeconds and cooldownSeconds 60, no
    velocity or session limit, no upgrade URL. In a PATCH an omitted setting stays as it is;
    null removes a velocity limit, session limit or upgrade URL."""

    policy: Policy = _unchanged_if_omitted()
    reset_interval: ResetInterval = _unchanged_if_omitted()
    threshold_percentages: Percentages = _unchanged_if_omitted()
    velocity_limit_microdollars: PositiveMicrodollars | None = None
    # Field names are the column names, so a body's fields apply to a row as they are.
    velocity_window_seconds: Seconds = _unchanged_if_omitted(alias="windowSeconds")
    velocity_cooldown_seconds: Seconds = _unchanged_if_omitted(alias="cooldownSeconds")
    session_limit_microdollars: PositiveMicrodollars | None = None
    upgrade_url: UpgradeUrl | None = Field(
        default=None, description="An http(s) URL; {customer_id} is filled in per denial."
    )


class BudgetChanges(BudgetSettings):
    """Any setting or the limit (raising it is allowed at any time); never the entity."""

    limit_microdollars: Microdollars = _unchanged_if_omitted()


class _NewBudget(BudgetSettings):
    limit_microdollars: Microdollars


class UserBudgetCreate(_NewBudget):
    """The whole organization's budget: entityId is the organization's id (the default)."""

    entity_type: Literal["user"]
    entity_id: ObjectId | None = None


class ApiKeyBudgetCreate(_NewBudget):
    """One API key's budget: entityId is the id of a key of the organization."""

    entity_type: Literal["api_key"]
    entity_id: ObjectId


class CustomerBudgetCreate(_NewBudget):
    entity_type: Literal["customer"]
    entity_id: CustomerId


class TagBudgetCreate(_NewBudget):
    """The budget of the requests tagged ``key=value``."""

    entity_type: Literal["tag"]
    entity_id: TagEntity


# One body type per entity type, so that the schema states each one's entityId rules.
BudgetCreate = Annotated[
    UserBudgetCreate | ApiKeyBudgetCreate | CustomerBudgetCreate | TagBudgetCreate,
    Body(discriminator="entity_type"),
]


class EntityStatus(ApiModel):
    entity_type: str
    entity_id: str
    limit_microdollars: int
    spend_microdollars: int
    reserved_microdollars: int
    policy: str
    reset_interval: str
    current_period_start: dt.datetime | None

    @computed_field
    def remaining_microdollars(self) -> int:
        return remaining(
            self.limit_microdollars, self.spend_microdollars, self.reserved_microdollars
        )


class BudgetOut(EntityStatus):
    id: str
    threshold_percentages: list[int]
    velocity_limit_microdollars: int | None
    velocity_window_seconds: int = Field(alias="windowSeconds")
    velocity_cooldown_seconds: int = Field(alias="cooldownSeconds")
    session_limit_microdollars: int | None
    upgrade_url: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class BudgetList(ApiModel):
    data: list[BudgetOut]


class BudgetStatus(ApiModel):
    entities: list[EntityStatus]


_ENTITY = {"entity_type", "entity_id"}


@router.post("/api/budgets", status_code=201)
async def create(body: BudgetCreate, principal: Admin, session: WriteSession) -> Data[BudgetOut]:
    entity_id = await budgets.check_entity(
        session, principal.org_id, body.entity_type, body.entity_id
    )
    settings = body.model_dump(exclude_unset=True, exclude=_ENTITY)
    budget = budgets.new_budget(principal.org_id, body.entity_type, entity_id, settings, utcnow())
    session.add(budget)
    try:
        await session.commit()
    except IntegrityError:
        raise ApiError(
            ErrorCode.CONFLICT,
            f"a {budget.entity_type} budget for {entity_id!r} exists already",
            {"entityType": budget.entity_type, "entityId": entity_id},
        ) from None
    return Data(data=BudgetOut.model_validate(budget))


@router.get("/api/budgets")
async def list_budgets(principal: Viewer, session: Session, request: Request) -> BudgetList:
    rows = await budgets.current(request.app.state.db, session, budgets.of_org(principal.org_id))
    return BudgetList(data=[BudgetOut.model_validate(b) for b in rows])


@router.get("/api/budgets/status")
async def status(principal: Viewer, session: Session, request: Request) -> BudgetStatus:
    """Every budget's limit, spend, reserved and remaining amounts in its current period."""
    rows = await budgets.current(request.app.state.db, session, budgets.of_org(principal.org_id))
    return BudgetStatus(entities=[EntityStatus.model_validate(b) for b in rows])


@router.get("/api/budgets/{budget_id}")
async def read(
    budget_id: str, principal: Viewer, session: Session, request: Request
) -> Data[BudgetOut]:
    query = budgets.one_of_org(principal.org_id, budget_id)
    rows = await budgets.current(request.app.state.db, session, query)
    if not rows:
        raise budgets.not_found(budget_id)
    return Data(data=BudgetOut.model_validate(rows[0]))


@router.patch("/api/budgets/{budget_id}")
async def change(
    budget_id: str, body: BudgetChanges, principal: Admin, session: WriteSession
) -> Data[BudgetOut]:
    query = budgets.one_of_org(principal.org_id, budget_id).with_for_update()
    budget = (await session.exec(query)).first()
    if budget is None:
        raise budgets.not_found(budget_id)
    now = utcnow()
    await reset_due_periods(session, [budget], now)  # the answer shows the current period
    budgets.change(budget, body.model_dump(exclude_unset=True), now)
    await session.commit()
    return Data(data=BudgetOut.model_validate(budget))


@router.delete("/api/budgets/{budget_id}")
async def remove(budget_id: str, principal: Admin, session: WriteSession) -> Data[BudgetOut]:
    budget = (await session.exec(budgets.one_of_org(principal.org_id, budget_id))).first()
    if budget is None:
        raise budgets.not_found(budget_id)
    await session.delete(budget)
    await session.commit()
    return Data(data=BudgetOut.model_validate(budget))
