from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from blipq.gateway.service import Service


async def get_service(request: Request) -> Service:  # async: FastAPI would run a plain def on a thread
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
