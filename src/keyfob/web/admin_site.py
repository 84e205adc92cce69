"""Admin pages for the Keyfob as a whole: invite codes (made, listed, revoked), app
verification (consent shows an app as verified once an admin vouched for its name), and
usage per person (calls and cost; never a key, a prompt or an app's calls).

Only admins reach these pages (``admin_people.admin_of``); revoking an invite has a
confirmation page, and an invite's code is shown once.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.accounts.people import AccountError, new_invite
from keyfob.allowance.windows import calendar_month, calendar_week
from keyfob.store.records import User
from keyfob.web.admin_people import admin_form, admin_of
from keyfob.web.render import error_page, flash, kf_of, page, redirect

INVITES = "/admin/invites"
APPS = "/admin/apps"
USAGE = "/admin/usage"
#: Invite lifetimes offered on the page: (value, label).
INVITE_TTLS = (("86400", "1 day"), ("604800", "7 days"), ("2592000", "30 days"), ("0", "never"))
USAGE_RANGES = {"week": "This week", "month": "This month", "all": "All time"}


async def invites_page(
    request: Request,
    admin: User | None = None,
    status: int = 200,
    errors: dict[str, str] | None = None,
    uses: str = "1",
    ttl: str = "604800",
    note: str = "",
) -> Response:
    if admin is None:
        found = await admin_of(request)
        if not isinstance(found, User):
            return found
        admin = found
    kf = kf_of(request)
    names = {u.id: u.username for u in await kf.store.users.list()}
    return page(
        request,
        "admin_invites.html",
        status,
        user=admin,
        nav="admin",
        tab="invites",
        invites=await kf.store.people.invites(),
        names=names,
        now=time.time(),
        signup=kf.settings.signup if kf.settings.mode == "hosted" else "closed",
        ttls=INVITE_TTLS,
        errors=errors or {},
        uses=uses,
        ttl=ttl,
        note=note,
    )


async def invites(request: Request) -> Response:
    return await invites_page(request)


async def create_invite(request: Request) -> Response:
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    admin, form = got
    uses_text, ttl_text, note = form.get("uses").strip()[:9], form.get("ttl"), form.get("note")
    values = {"uses": uses_text, "ttl": ttl_text, "note": note[:200]}
    if not uses_text.isdigit():
        return await invites_page(
            request, admin, 400, {"uses": "enter how many people may use it (a number)"}, **values
        )
    if ttl_text not in {v for v, _label in INVITE_TTLS}:
        return await invites_page(
            request, admin, 400, {"ttl": "choose how long it lasts"}, **values
        )
    try:
        invite, code = await new_invite(
            kf_of(request).store,
            admin,
            uses=int(uses_text),
            ttl_s=int(ttl_text) or None,
            note=note,
        )
    except AccountError as exc:
        field = "note" if "note" in str(exc) else "uses"
        return await invites_page(request, admin, 400, {field: str(exc)}, **values)
    flash(request, f"Made an invite for {invite.max_uses} person(s).")
    issuer = kf_of(request).settings.issuer
    return page(
        request,
        "admin_secret.html",
        user=admin,
        nav="admin",
        tab="invites",
        title="A new invite",
        intro="Give this link (or the code at its end) to the people you invite. It is "
        "shown only now; Keyfob keeps only its hash.",
        secret=f"{issuer}/signup?code={code}",
        expires_at=invite.expires_at,
        back=INVITES,
    )


async def revoke_invite(request: Request) -> Response:
    admin = await admin_of(request)
    if not isinstance(admin, User):
        return admin
    kf = kf_of(request)
    invite = await kf.store.people.invite(request.path_params["invite_id"][:64])
    if invite is None:
        return error_page(request, 404, "No such invite", "This invite does not exist.", admin)
    if request.method == "GET":
        return page(
            request,
            "admin_confirm.html",
            user=admin,
            nav="admin",
            tab="invites",
            title="Revoke this invite?",
            text=f"Used {invite.uses} of {invite.max_uses} times. Nobody can sign up with "
            "it any more; the accounts made with it stay.",
            action=f"/admin/invites/{invite.id}/revoke",
            button="Revoke the invite",
            danger=True,
            cancel=INVITES,
        )
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    if await kf.store.people.revoke_invite(invite.id):
        flash(request, "Invite revoked.")
    else:
        flash(request, "That invite was already revoked.")
    return redirect(INVITES)


async def apps(request: Request) -> Response:
    admin = await admin_of(request)
    if not isinstance(admin, User):
        return admin
    kf = kf_of(request)
    names = {u.id: u.username for u in await kf.store.users.list()}
    return page(
        request,
        "admin_apps.html",
        user=admin,
        nav="admin",
        tab="apps",
        clients=await kf.store.clients.list(),
        names=names,
    )


async def verify(request: Request) -> Response:
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    _admin, form = got
    client_id = form.get("client_id")[:255]
    verified = form.get("verified") == "yes"
    kf = kf_of(request)
    client = await kf.store.clients.get(client_id)
    if client is None or not await kf.store.clients.set_verified(client_id, verified):
        flash(request, "No such app.", "error")
        return redirect(APPS)
    flash(
        request,
        f"{client.name} is {'verified' if verified else 'no longer verified'}: consent says so.",
    )
    return redirect(APPS)


async def usage(request: Request) -> Response:
    admin = await admin_of(request)
    if not isinstance(admin, User):
        return admin
    kf = kf_of(request)
    chosen = request.query_params.get("range", "month")
    chosen = chosen if chosen in USAGE_RANGES else "month"
    now = time.time()
    since = {
        "week": calendar_week(now, admin.timezone).starts_at,
        "month": calendar_month(now, admin.timezone).starts_at,
    }.get(chosen)
    totals = await kf.store.people.usage_by_person(since)
    rows = [{"user": u, "usage": totals.get(u.id)} for u in await kf.store.users.list()]
    rows.sort(key=lambda r: -(r["usage"].cost_micro_usd if r["usage"] else 0))  # type: ignore[union-attr]
    return page(
        request,
        "admin_usage.html",
        user=admin,
        nav="admin",
        tab="usage",
        rows=rows,
        ranges=USAGE_RANGES,
        chosen=chosen,
        total_calls=sum(u.calls for u in totals.values()),
        total_cost=sum(u.cost_micro_usd for u in totals.values()),
        tz=admin.timezone,
    )


ROUTES: list[BaseRoute] = [
    Route(INVITES, invites, methods=["GET"]),
    Route(INVITES, create_invite, methods=["POST"]),
    Route("/admin/invites/{invite_id}/revoke", revoke_invite, methods=["GET", "POST"]),
    Route(APPS, apps, methods=["GET"]),
    Route("/admin/apps/verify", verify, methods=["POST"]),
    Route(USAGE, usage, methods=["GET"]),
]
