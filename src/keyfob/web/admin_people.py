"""Admin pages for people: the list (role, state, numbers of apps and providers, never
their keys), adding a person, disabling and enabling, one-time password links, roles,
and ending a person's sessions.

Only admins reach these pages; a member gets 403. Disabling and a role change have a
confirmation page; every action ends with a message. Links and codes are shown once on
the answer page and never logged.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.accounts.people import (
    ROLES,
    AccountError,
    add_person,
    disable,
    enable,
    log_out_everywhere,
    password_link,
    set_role,
)
from keyfob.store.records import User
from keyfob.web.forms import Form, FormError, read_form
from keyfob.web.render import (
    current_user,
    error_page,
    flash,
    kf_of,
    login_redirect,
    page,
    redirect,
)

PEOPLE = "/admin"


async def admin_of(request: Request) -> User | Response:
    """The signed-in admin, or the page to show instead (login, or 403 for a member)."""
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    if not user.is_admin:
        return error_page(
            request,
            403,
            "For admins only",
            "This page is for the admins of this Keyfob.",
            user,
            next_step="Go back to your overview.",
        )
    return user


async def admin_form(request: Request) -> tuple[User, Form] | Response:
    admin = await admin_of(request)
    if not isinstance(admin, User):
        return admin
    try:
        form = await read_form(request, kf_of(request).settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, admin)
    return admin, form


async def _person(request: Request, admin: User) -> User | Response:
    person = await kf_of(request).store.users.get(request.path_params["user_id"][:64])
    if person is None:
        return error_page(
            request,
            404,
            "No such person",
            "Nobody with this id uses this Keyfob.",
            admin,
            next_step="Go back to the list of people.",
        )
    return person


async def people_page(
    request: Request,
    admin: User | None = None,
    status: int = 200,
    errors: dict[str, str] | None = None,
    **values: Any,
) -> Response:
    if admin is None:
        found = await admin_of(request)
        if not isinstance(found, User):
            return found
        admin = found
    kf = kf_of(request)
    counts = await kf.store.people.counts_by_person()
    people = [
        {"user": u, "grants": counts.get(u.id, (0, 0))[0], "providers": counts.get(u.id, (0, 0))[1]}
        for u in await kf.store.users.list()
    ]
    return page(
        request,
        "admin_people.html",
        status,
        user=admin,
        nav="admin",
        tab="people",
        people=people,
        roles=ROLES,
        errors=errors or {},
        username=values.get("username", ""),
        role=values.get("role", "member"),
    )


async def people(request: Request) -> Response:
    return await people_page(request)


async def _link_page(request: Request, admin: User, person: User, why: str) -> Response:
    kf = kf_of(request)
    link = await password_link(kf.store, kf.settings.issuer, person, admin)
    return page(
        request,
        "admin_secret.html",
        user=admin,
        nav="admin",
        tab="people",
        title=f"A password link for {person.username}",
        intro=why,
        secret=link.url,
        expires_at=link.expires_at,
        back=PEOPLE,
    )


async def add(request: Request) -> Response:
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    admin, form = got
    username = form.get("username").strip()[:64]
    role = form.get("role", "member")
    try:
        person = await add_person(kf_of(request).store, username, None, role=role)
    except AccountError as exc:
        field = "role" if "role" in str(exc) else "username"
        return await people_page(
            request, admin, 400, {field: str(exc)}, username=username, role=role
        )
    flash(request, f"Added {person.username} ({person.role}).")
    return await _link_page(
        request,
        admin,
        person,
        f"Give this link to {person.username} (by a channel you trust): it lets them set "
        "their password once, within a day. It is shown only now.",
    )


async def reset(request: Request) -> Response:
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    admin, _form = got
    person = await _person(request, admin)
    if not isinstance(person, User):
        return person
    if not person.active:
        flash(request, f"{person.username} is disabled; enable them first.", "error")
        return redirect(PEOPLE)
    flash(request, f"Made a password link for {person.username}; older links stopped working.")
    return await _link_page(
        request,
        admin,
        person,
        f"Give this link to {person.username}: it sets a new password once, within a day. "
        "Their current password works until then. It is shown only now.",
    )


def _confirm(request: Request, admin: User, **context: Any) -> Response:
    return page(request, "admin_confirm.html", user=admin, nav="admin", tab="people", **context)


async def disable_person(request: Request) -> Response:
    admin = await admin_of(request)
    if not isinstance(admin, User):
        return admin
    person = await _person(request, admin)
    if not isinstance(person, User):
        return person
    if request.method == "GET":
        grants = len(await kf_of(request).store.grants.list(person.id))
        return _confirm(
            request,
            admin,
            title=f"Disable {person.username}?",
            text=f"{person.username} is logged out everywhere and cannot log in. Their "
            f"{grants} app grant(s) are revoked: every token is refused from the next call, "
            "and calls in progress are cut. Enabling them later does not bring the grants "
            "back; they allow their apps again.",
            action=f"/admin/people/{person.id}/disable",
            button=f"Disable {person.username}",
            danger=True,
        )
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    if person.id == admin.id:
        flash(request, "You cannot disable yourself; ask another admin.", "error")
        return redirect(PEOPLE)
    try:
        revoked = await disable(kf_of(request).store, person)
    except AccountError as exc:
        flash(request, str(exc), "error")
        return redirect(PEOPLE)
    flash(request, f"Disabled {person.username}; {revoked} grant(s) revoked, sessions ended.")
    return redirect(PEOPLE)


async def enable_person(request: Request) -> Response:
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    admin, _form = got
    person = await _person(request, admin)
    if not isinstance(person, User):
        return person
    await enable(kf_of(request).store, person)
    flash(request, f"Enabled {person.username}. They allow their apps again themselves.")
    return redirect(PEOPLE)


async def role(request: Request) -> Response:
    admin = await admin_of(request)
    if not isinstance(admin, User):
        return admin
    person = await _person(request, admin)
    if not isinstance(person, User):
        return person
    if request.method == "GET":
        new = "member" if person.is_admin else "admin"
        what = (
            "can see every person's name, state and totals, add, disable and enable people, "
            "make password links and invites, and verify apps (never anyone's keys)"
        )
        return _confirm(
            request,
            admin,
            title=f"Make {person.username} {'a member' if new == 'member' else 'an admin'}?",
            text=(
                f"An admin {what}." if new == "admin" else f"{person.username} no longer {what}."
            ),
            action=f"/admin/people/{person.id}/role",
            button=f"Make {person.username} {new}",
            danger=new == "member",
            hidden={"role": new},
        )
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    _admin, form = got
    try:
        await set_role(kf_of(request).store, person, form.get("role"))
    except AccountError as exc:
        flash(request, str(exc), "error")
        return redirect(PEOPLE)
    flash(request, f"{person.username} is now {form.get('role')}.")
    return redirect(PEOPLE)


async def logout_person(request: Request) -> Response:
    got = await admin_form(request)
    if not isinstance(got, tuple):
        return got
    admin, _form = got
    person = await _person(request, admin)
    if not isinstance(person, User):
        return person
    ended = await log_out_everywhere(kf_of(request).store, person)
    flash(request, f"Ended {ended} session(s) of {person.username}.")
    return redirect(PEOPLE)


ROUTES: list[BaseRoute] = [
    Route(PEOPLE, people, methods=["GET"]),
    Route("/admin/people", add, methods=["POST"]),
    Route("/admin/people/{user_id}/disable", disable_person, methods=["GET", "POST"]),
    Route("/admin/people/{user_id}/enable", enable_person, methods=["POST"]),
    Route("/admin/people/{user_id}/reset", reset, methods=["POST"]),
    Route("/admin/people/{user_id}/role", role, methods=["GET", "POST"]),
    Route("/admin/people/{user_id}/logout", logout_person, methods=["POST"]),
]
