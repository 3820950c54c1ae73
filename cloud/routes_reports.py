"""Emissions reports to download: ``GET /api/carbon/report`` renders the tenant's monthly or annual
report from the stored accounts (``carbon/stored.py``) as PDF, CSV or JSON, in zh-CN or en, the same
renderer as ``carbonlink carbon report`` (``carbon/report.py``).

Read like every carbon figure (any role of the tenant); the file comes as an attachment whose name
says what it is, e.g. ``emissions-acme-2025-03-zh-CN.pdf``. A PDF is drawn on a worker thread: it
embeds a subset of a CJK font and takes long enough to hold up other requests on the event loop.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from .auth import Reader
from .store import Store

MEDIA = {"pdf": "application/pdf", "csv": "text/csv; charset=utf-8", "json": "application/json"}


def attachment(name: str) -> str:
    """A Content-Disposition for a download; the name is made of safe characters only."""
    return f'attachment; filename="{re.sub(r"[^A-Za-z0-9._-]", "_", name)}"'


def create_reports_router(store: Store) -> APIRouter:
    router = APIRouter(tags=["carbon"])

    @router.get("/api/carbon/report", response_class=Response,
                summary="The tenant's emissions report for a month or a year, as PDF, CSV or JSON",
                responses={200: {"content": {m: {} for m in MEDIA.values()},
                                 "description": "the report, as an attachment"}})
    async def report(p: Reader, year: Annotated[int, Query(ge=2000, le=2100)],
                     month: Annotated[int | None, Query(ge=1, le=12, description="a monthly report (rows per "
                                                        "day); without it, the annual one (rows per month)")] = None,
                     format: Literal["pdf", "csv", "json"] = "pdf",
                     lang: Literal["zh-CN", "en"] = "zh-CN",
                     tz_offset_min: Annotated[int, Query(ge=-840, le=840, multiple_of=15)] = 480) -> Response:
        from .carbon.errors import CarbonInputError
        from .carbon.report import find_font, render
        from .carbon.stored import report_period, stored_accounts

        kind: Literal["monthly", "annual"] = "monthly" if month else "annual"
        try:
            acc = await stored_accounts(store.db, p.tenant, kind=kind, year=year, month=month,
                                        tz_offset_min=tz_offset_min)
        except CarbonInputError as exc:
            raise HTTPException(404, str(exc)) from None
        if format == "pdf":
            try:
                find_font()
            except CarbonInputError as exc:  # the server's set-up, not the caller's request
                raise HTTPException(503, str(exc)) from None
        body = await asyncio.to_thread(render, acc, format, lang)
        name = f"emissions-{p.tenant}-{report_period(kind, year, month)}-{lang}.{format}"
        return Response(body, media_type=MEDIA[format],
                        headers={"Content-Disposition": attachment(name), "Cache-Control": "no-store"})

    return router
