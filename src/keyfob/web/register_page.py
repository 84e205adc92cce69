"""Registering an app (any person's): its name, redirect URIs and client type; a
confidential app's secret is shown once. An admin's app is verified at once; a member's
shows as not verified on consent until an admin marks it (``admin_site.py``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.oauth.clients import InvalidClient, register_app
from keyfob.oauth.rfc8414 import METADATA_PATH
from keyfob.web.forms import FormError, read_form
from keyfob.web.render import current_user, error_page, flash, kf_of, login_redirect, page


async def new_app(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    if request.method == "GET":
        return page(
            request,
            "app_new.html",
            user=user,
            name="",
            redirect_uris="",
            client_type="public",
            errors={},
        )
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    name, uris = form.get("name"), form.get("redirect_uris")
    client_type = "confidential" if form.get("client_type") == "confidential" else "public"
    try:
        client, secret = await register_app(
            kf.store,
            name=name,
            redirect_uris=uris.splitlines(),
            public=client_type == "public",
            registered_by=user,
        )
    except InvalidClient as exc:
        field = "redirect_uris" if "redirect" in str(exc).lower() else "name"
        return page(
            request,
            "app_new.html",
            400,
            user=user,
            name=name,
            redirect_uris=uris,
            client_type=client_type,
            errors={field: str(exc)},
        )
    flash(request, f"Registered {client.name}.")
    return page(
        request,
        "app_created.html",
        user=user,
        client=client,
        secret=secret,
        metadata_url=kf.settings.issuer + METADATA_PATH,
    )


ROUTES: list[BaseRoute] = [Route("/apps/new", new_app, methods=["GET", "POST"])]
