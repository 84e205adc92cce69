"""A person's providers: the list with every model's price, linking one (tested first),
editing the address, key and models (tested again when the address or key changes, with
a "save anyway" choice when the test fails), price overrides, and removing one (confirmed).

Keys are never rendered, not even back into the form they were typed in. A model with no
known price is flagged where the person can fix it: a call to it would be refused.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keyfob.money import parse_usd, usd_input
from keyfob.pricing.prices import Price, UnknownPrice, price_for
from keyfob.providers.connection import ConnectionResult, try_connection, unpriced_models
from keyfob.providers.linking import (
    LinkRefused,
    checked_base_url,
    link_provider,
)
from keyfob.store import reports
from keyfob.store.records import Provider, User
from keyfob.terms import check_credential
from keyfob.web.forms import FormError, read_form
from keyfob.web.render import (
    current_user,
    error_page,
    flash,
    kf_of,
    login_redirect,
    page,
    redirect,
)

MAX_MODELS = 500


def per_mtok(rate: Decimal | None) -> str:
    """A rate in USD per million tokens: "$0.15", "$2.50", "$0.075"."""
    if rate is None:
        return "—"
    text = f"{rate.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def price_view(price: Price | None) -> dict[str, Any]:
    if price is None:
        return {"known": False}
    if price.source == "local":
        return {"known": True, "free": True, "source": "local"}
    if price.model_price is not None:
        return {"known": True, "tiered": True, "source": price.source}
    return {
        "known": True,
        "source": price.source,
        "input": per_mtok(price.input_per_mtok),
        "output": per_mtok(price.output_per_mtok),
        "cached": per_mtok(price.cache_read_per_mtok)
        if price.cache_read_per_mtok is not None
        else None,
    }


def _lookup(model: str, overrides: Any, provider: Provider, is_local: bool) -> Price | None:
    """The price the gateway would use (same lookup: overrides, local, then catalogues)."""
    try:
        return price_for(
            model,
            overrides=overrides,
            is_local=is_local,
            kind=provider.kind,
            base_url=provider.base_url,
        )
    except UnknownPrice:
        return None


async def model_prices(request: Request, provider: Provider) -> list[dict[str, Any]]:
    """Per model: the price in force, the library's own, and the person's override."""
    overrides = await kf_of(request).store.providers.prices(provider.id)
    rows = []
    for model in provider.models:
        o = overrides.get(model)
        rows.append(
            {
                "model": model,
                "in_force": price_view(_lookup(model, overrides, provider, provider.is_local)),
                "library": price_view(_lookup(model, {}, provider, False)),
                "override": {
                    "input": usd_input(o.input_micro_usd_per_mtok),
                    "output": usd_input(o.output_micro_usd_per_mtok),
                    "cached": usd_input(o.cached_input_micro_usd_per_mtok)
                    if o.cached_input_micro_usd_per_mtok is not None
                    else "",
                }
                if o
                else None,
            }
        )
    return rows


async def _own(request: Request) -> tuple[User, Provider] | Response:
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    provider = await kf_of(request).store.providers.get(request.path_params["provider_id"][:64])
    if provider is None or provider.user_id != user.id:
        return error_page(
            request,
            404,
            "No such provider",
            "This provider is not linked to your account (it may have been removed).",
            user,
            next_step="See your providers on the Providers page.",
        )
    return user, provider


async def providers_page(request: Request) -> Response:
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    kf = kf_of(request)
    providers = []
    marks = await kf.store.overruns.by_provider(user.id)
    for p in await kf.store.providers.list(user.id):
        prices = await model_prices(request, p)
        providers.append(
            {
                "p": p,
                "mark": marks.get(p.id),
                "prices": prices,
                "unpriced": [r["model"] for r in prices if not r["in_force"]["known"]],
            }
        )
    return page(request, "providers.html", user=user, nav="providers", providers=providers)


def _split_models(text: str) -> list[str]:
    return list(dict.fromkeys(m.strip() for m in text.replace("\n", ",").split(",") if m.strip()))


async def new_provider(request: Request) -> Response:
    kf = kf_of(request)
    user = await current_user(request)
    if user is None:
        return login_redirect(request)
    values: dict[str, Any] = {
        "name": "",
        "base_url": "",
        "models": "",
        "is_local": False,
        "offer_anyway": False,
    }
    if request.method == "GET":
        return page(request, "provider_new.html", user=user, nav="providers", errors={}, **values)
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    name, base_url = form.get("name").strip(), form.get("base_url").strip()
    models_text, is_local = form.get("models"), form.get("is_local") == "1"
    api_key = form.get("api_key").strip() or None
    models = _split_models(models_text)
    values.update(name=name, base_url=base_url, models=models_text, is_local=is_local)

    def again(status: int, errors: dict[str, str], offer_anyway: bool = False) -> Response:
        # the key is never sent back, not even into the form it came from
        values["offer_anyway"] = offer_anyway
        return page(
            request,
            "provider_new.html",
            status,
            user=user,
            nav="providers",
            errors=errors,
            error="The provider was not linked; see the notes by the fields.",
            **values,
        )

    if len(models) > MAX_MODELS:
        return again(400, {"models": f"list at most {MAX_MODELS} models"})
    if not name:
        return again(400, {"name": "give the provider a short name, such as openai or local"})
    if await kf.store.providers.by_name(user.id, name) is not None:
        return again(400, {"name": f"a provider named {name!r} exists already; choose another"})
    try:
        url = await checked_base_url(kf, base_url)
    except LinkRefused as exc:
        return again(400, {"base_url": str(exc)})
    verdict = check_credential("openai_compatible", api_key)
    if not verdict.allowed:
        return again(400, {"api_key": verdict.explanation})
    found: list[str] = []
    if form.get("link_anyway") != "1":
        result = await try_connection(
            kf, kind="openai_compatible", base_url=url, api_key=api_key, is_local=is_local
        )
        if not result.ok:
            return again(400, {result.field or "base_url": result.problem}, offer_anyway=True)
        found = result.models
    try:
        provider = await link_provider(
            kf,
            user_id=user.id,
            name=name,
            kind="openai_compatible",
            base_url=url,
            api_key=api_key,
            models=models or found,
            is_local=is_local,
        )
    except (LinkRefused, ValueError) as exc:
        field = "name" if "name" in str(exc) else "base_url"
        return again(400, {field: str(exc)})
    await flash_linked(request, provider, found, models)
    return redirect(f"/providers/{provider.id}")


async def flash_linked(
    request: Request, provider: Provider, listed: list[str], typed: list[str]
) -> None:
    count = len(provider.models)
    text = f"Linked {provider.name} with {count} model{'' if count == 1 else 's'}."
    missing = [m for m in typed if listed and m not in listed]
    if missing:
        text += f" The provider does not list {', '.join(missing[:5])}; check the spelling."
    flash(request, text)
    unpriced = await unpriced_models(kf_of(request), provider)
    if unpriced:
        shown = ", ".join(unpriced[:5]) + (" and more" if len(unpriced) > 5 else "")
        flash(
            request,
            f"No price is known for {shown}: calls to "
            f"{'it' if len(unpriced) == 1 else 'them'} are refused until you set a price "
            "below (or mark the provider as local hardware, which is free).",
            "error",
        )


async def provider_page(request: Request) -> Response:
    """GET: edit address, key, models and prices. POST: save address, key and models."""
    found = await _own(request)
    if isinstance(found, Response):
        return found
    user, provider = found
    kf = kf_of(request)
    errors: dict[str, str] = {}
    base_url = provider.base_url
    models_text = ", ".join(provider.models)
    status = 200
    offer_anyway = untested = api_key_typed = False
    tested: ConnectionResult | None = None
    if request.method == "POST":
        try:
            form = await read_form(request, kf.settings.max_form_bytes)
        except FormError as exc:
            return error_page(
                request, exc.status, "The form could not be accepted", exc.message, user
            )
        base_url, models_text = form.get("base_url").strip(), form.get("models")
        api_key = form.get("api_key").strip() or None
        api_key_typed = api_key is not None
        models = _split_models(models_text)
        url = provider.base_url
        try:
            url = await checked_base_url(kf, base_url)
        except LinkRefused as exc:
            errors["base_url"] = str(exc)
        if len(models) > MAX_MODELS:
            errors["models"] = f"list at most {MAX_MODELS} models"
        if api_key is not None:
            verdict = check_credential(provider.kind, api_key)
            if not verdict.allowed:
                errors["api_key"] = verdict.explanation
        removing = api_key is None and form.get("remove_key") == "1"
        if not errors and (url != provider.base_url or api_key is not None or removing):
            if form.get("save_anyway") == "1":
                untested = True
            else:
                result = await _try_edit(request, provider, url, api_key, removing)
                if not result.ok:
                    errors[result.field or "base_url"] = result.problem
                    offer_anyway = True
                else:
                    tested = result
        if not errors:
            if url != provider.base_url:
                await kf.store.providers.set_base_url(provider.id, url)
            if api_key is not None:
                envelope = kf.vault.encrypt(api_key, context=provider.id)
                await kf.store.providers.set_credential(provider.id, envelope)
            elif form.get("remove_key") == "1":
                await kf.store.providers.set_credential(provider.id, None)
            await kf.store.providers.set_models(provider.id, models)
            if tested is not None:
                flash(request, f"Saved {provider.name}; it {answered(tested.models)}")
            elif untested:
                flash(
                    request,
                    f"Saved {provider.name} without a connection test; use “Test the "
                    "connection” when it is reachable.",
                )
            else:
                flash(request, f"Saved {provider.name}.")
            refreshed = await kf.store.providers.get(provider.id)
            if refreshed is not None:
                await _flag_unpriced(request, refreshed)
            return redirect(f"/providers/{provider.id}")
        status = 400
    return page(
        request,
        "provider_edit.html",
        status,
        user=user,
        nav="providers",
        provider=provider,
        base_url=base_url,
        models=models_text,
        prices=await model_prices(request, provider),
        errors=errors,
        offer_anyway=offer_anyway,
        retype_key=offer_anyway and api_key_typed,
        error="Nothing was saved; see the notes by the fields." if errors else None,
    )


async def _try_edit(
    request: Request, provider: Provider, url: str, api_key: str | None, removing: bool
) -> ConnectionResult:
    """The connection test of an edit: the new address with the new key (or the stored
    one when no new key was typed, or none when it is being deleted)."""
    from keyfob.providers.linking import decrypt_key

    kf = kf_of(request)
    if api_key is None and not removing:
        api_key = await decrypt_key(kf, provider)
    return await try_connection(
        kf, kind=provider.kind, base_url=url, api_key=api_key, is_local=provider.is_local
    )


def answered(models: list[str], shown: int = 5) -> str:
    """What a passed connection test found, in words: the models, or how many plus the
    first few ("answered and lists 12 models, among them a, b, c, d and e.")."""
    n = len(models)
    if n == 0:
        return "answered, but lists no models; type the model names yourself."
    if n == 1:
        return f"answered and lists 1 model: {models[0]}."
    if n <= shown:
        return f"answered and lists {n} models: {', '.join(models[:-1])} and {models[-1]}."
    first = models[:shown]
    return f"answered and lists {n} models, among them {', '.join(first[:-1])} and {first[-1]}."


async def _flag_unpriced(request: Request, provider: Provider) -> None:
    unpriced = await unpriced_models(kf_of(request), provider)
    if unpriced:
        flash(
            request,
            f"No price is known for {', '.join(unpriced[:5])}: set one below, or calls "
            "to it are refused.",
            "error",
        )


async def test_provider(request: Request) -> Response:
    """POST: ask the linked provider for its models with the stored key, say the result."""
    found = await _own(request)
    if isinstance(found, Response):
        return found
    user, provider = found
    kf = kf_of(request)
    try:
        await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    from keyfob.providers.linking import decrypt_key

    result = await try_connection(
        kf,
        kind=provider.kind,
        base_url=provider.base_url,
        api_key=await decrypt_key(kf, provider),
        is_local=provider.is_local,
    )
    if result.ok:
        flash(request, f"{provider.name} {answered(result.models)}")
        missing = [m for m in provider.models if result.models and m not in result.models]
        if missing:
            flash(
                request,
                f"It does not list {', '.join(missing[:5])}; check the spelling of the "
                "models below.",
                "error",
            )
    else:
        flash(request, f"Connection test failed: {result.problem}.", "error")
    return redirect(f"/providers/{provider.id}")


async def set_price(request: Request) -> Response:
    """POST: a price override for one model (USD per million tokens), or its removal."""
    found = await _own(request)
    if isinstance(found, Response):
        return found
    user, provider = found
    kf = kf_of(request)
    try:
        form = await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    model = form.get("model")
    if model not in provider.models:
        flash(request, "Choose a model this provider serves.", "error")
        return redirect(f"/providers/{provider.id}")
    if form.get("action") == "remove":
        await kf.store.providers.remove_price(provider.id, model)
        flash(request, f"{model} uses the known price again (if there is one).")
        return redirect(f"/providers/{provider.id}#prices")
    try:
        rin = parse_usd(form.get("input"))
        rout = parse_usd(form.get("output"))
        cached_text = form.get("cached").strip()
        cached = parse_usd(cached_text) if cached_text else None
    except ValueError:
        flash(
            request,
            f"The price of {model} was not saved: enter USD per million tokens, such as "
            "0.15 (input) and 0.60 (output).",
            "error",
        )
        return redirect(f"/providers/{provider.id}#prices")
    await kf.store.providers.set_price(
        provider.id,
        model,
        input_micro_usd_per_mtok=rin,
        output_micro_usd_per_mtok=rout,
        cached_input_micro_usd_per_mtok=cached,
    )
    flash(request, f"Saved the price of {model}.")
    return redirect(f"/providers/{provider.id}#prices")


async def remove_provider(request: Request) -> Response:
    """GET: confirm (naming the apps that use it). POST: remove it and its prices."""
    found = await _own(request)
    if isinstance(found, Response):
        return found
    user, provider = found
    kf = kf_of(request)
    prefix = f"{provider.name}/"
    using = []
    names = await reports.app_names(kf.store.engine, user.id)
    for g in await kf.store.grants.list(user.id):
        if any(m.startswith(prefix) for m in g.models):
            using.append(names.get(g.client_id, g.client_id))
    if request.method == "GET":
        return page(
            request,
            "provider_remove.html",
            user=user,
            nav="providers",
            provider=provider,
            using=using,
        )
    try:
        await read_form(request, kf.settings.max_form_bytes)
    except FormError as exc:
        return error_page(request, exc.status, "The form could not be accepted", exc.message, user)
    await kf.store.providers.remove(provider.id)
    flash(request, f"Removed {provider.name}; its key is deleted.")
    return redirect("/providers")


ROUTES: list[BaseRoute] = [
    Route("/providers", providers_page, methods=["GET"]),
    Route("/providers/new", new_provider, methods=["GET", "POST"]),
    Route("/providers/{provider_id}", provider_page, methods=["GET", "POST"]),
    Route("/providers/{provider_id}/test", test_provider, methods=["POST"]),
    Route("/providers/{provider_id}/prices", set_price, methods=["POST"]),
    Route("/providers/{provider_id}/remove", remove_provider, methods=["GET", "POST"]),
]
