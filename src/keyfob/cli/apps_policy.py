"""``keyfob apps policy``: show or change an app's allowance."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keyfob.cli.apps import app
from keyfob.cli.common import (
    DatabaseUrl,
    DataDir,
    console,
    fail,
    grant_of,
    with_kf,
)
from keyfob.context import Keyfob


@app.command("policy")
def apps_policy(
    app_ref: Annotated[str, typer.Argument(metavar="APP", help="client_id or app name.")],
    month: Annotated[str | None, typer.Option(help="USD cap per calendar month.")] = None,
    week: Annotated[str | None, typer.Option(help="USD cap per calendar week.")] = None,
    day: Annotated[str | None, typer.Option(help="USD cap per calendar day.")] = None,
    rolling: Annotated[
        list[str] | None,
        typer.Option(help="Rolling cap DURATION=USD, e.g. 5h=2 or 7d=10 (repeatable)."),
    ] = None,
    model_cap: Annotated[
        list[str] | None,
        typer.Option("--model-cap", help="Monthly cap on one model: MODEL=USD (repeatable)."),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (worst case).")] = None,
    per_call: Annotated[str | None, typer.Option(help="USD ceiling per call.")] = None,
    wallet: Annotated[
        bool | None, typer.Option("--wallet/--no-wallet", help="Also draw from your wallet.")
    ] = None,
    on_exhausted: Annotated[str | None, typer.Option(help="block, wait or downgrade.")] = None,
    wait_max: Annotated[float | None, typer.Option(help="Seconds `wait` may hold a call.")] = None,
    fallback: Annotated[str | None, typer.Option(help="Model served by `downgrade`.")] = None,
    fallback_chain: Annotated[
        str | None,
        typer.Option(
            "--fallback-chain",
            help="Models tried in turn when the requested one's upstream fails, "
            "e.g. a/b,c/d ('' to clear).",
        ),
    ] = None,
    webhook: Annotated[str | None, typer.Option(help="URL told at 50/80/100 percent.")] = None,
    output_limit: Annotated[
        str | None,
        typer.Option(
            "--output-limit",
            help="When a call's worst case does not fit: fit (lower its output limit), "
            "refuse, or auto (fit only when the app set no limit).",
        ),
    ] = None,
    fit_floor: Annotated[
        int | None,
        typer.Option("--fit-floor", help="Fewest output tokens `fit` lowers a call to."),
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Only print the policy.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show or change an app's allowance: caps per window, rates, wallet, exhaustion."""
    from keyfob.allowance.policy import PolicyError, SpendLimit, parse_duration
    from keyfob.allowance.service import policy_of
    from keyfob.money import parse_usd, usd_summary

    async def body(kf: Keyfob) -> tuple[Any, list[Any], str]:
        grant = await grant_of(kf, app_ref)
        policy = policy_of(grant)
        if not show:
            limits = list(policy.limits)

            def replace(
                period: str, usd: str | None, model: str | None = None, seconds: int | None = None
            ) -> None:
                if usd is None:
                    return
                limits[:] = [
                    lim
                    for lim in limits
                    if not (lim.period == period and lim.model == model and lim.seconds == seconds)
                ]
                if usd.strip() not in ("", "none", "off"):
                    limits.append(SpendLimit(period, parse_usd(usd), seconds, model))

            replace("month", month)
            replace("week", week)
            replace("day", day)
            for item in rolling or []:
                span, _, usd = item.partition("=")
                replace("rolling", usd, seconds=parse_duration(span))
            for item in model_cap or []:
                model, _, usd = item.rpartition("=")
                replace("month", usd, model=model)
            changes: dict[str, Any] = {"limits": tuple(limits)}
            if rpm is not None:
                changes["requests_per_minute"] = rpm or None
            if tpm is not None:
                changes["tokens_per_minute"] = tpm or None
            if per_call is not None:
                changes["per_call_ceiling_micro_usd"] = parse_usd(per_call) or None
            if wallet is not None:
                changes["use_wallet"] = wallet
            if on_exhausted is not None:
                changes["on_exhausted"] = on_exhausted
            if wait_max is not None:
                changes["wait_max_s"] = wait_max
            if fallback is not None:
                changes["fallback_model"] = fallback or None
            if webhook is not None:
                changes["webhook_url"] = webhook or None
            if fallback_chain is not None:
                chain = [m.strip() for m in fallback_chain.split(",") if m.strip()]
                changes["fallback_chain"] = tuple(chain)
            if output_limit is not None:
                changes["output_limit"] = output_limit
            if fit_floor is not None:
                changes["fit_floor_tokens"] = fit_floor
            policy = policy.with_changes(**changes)
            await kf.store.grants.set_policy(
                grant.id, policy_json=policy.to_json(), cap_micro_usd=policy.primary_cap_micro_usd
            )
            changed = await kf.store.grants.get(grant.id)
            if changed is None:
                raise fail(f"the grant of {app_ref!r} ended meanwhile")
            grant = changed
        states = await kf.allowance.limits(grant)
        secret = kf.allowance.notifier.grant_secret(grant.id).hex()
        return (policy, states, secret)

    try:
        policy, states, secret = with_kf(data_dir, database_url, body)
    except (PolicyError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"policy: {policy.to_json()}")
    for st in states:
        console.print(
            f"  {st.label:<24} cap {usd_summary(st.cap_micro_usd)}  "
            f"spent {usd_summary(st.spent_micro_usd)}  "
            f"left {usd_summary(st.left_micro_usd)}"
        )
    if policy.webhook_url:
        console.print(f"webhook signing secret (HMAC-SHA256): {secret}")
