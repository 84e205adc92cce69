"""The person's own usage export, behind their signed-in session: every app, grouped by
``by=app,model,day``, as JSON or ``format=csv`` (the dashboard links to it)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keyfob.context import Keyfob
from keyfob.gateway.errors import GatewayError
from keyfob.gateway.keyfob_api import usage_report
from keyfob.web.render import current_user


async def usage_export(request: Request) -> Response:
    kf: Keyfob = request.app.state.kf
    user = await current_user(request)
    if user is None:
        return JSONResponse({"error": "sign in first"}, status_code=401)
    try:
        return await usage_report(kf, user.id, user.timezone, request.query_params, None)
    except GatewayError as exc:
        return exc.response()


ROUTES = [Route("/api/usage", usage_export, methods=["GET"])]
