"""What a person is told when a sign-in link cannot be trusted, in words they can act on.

At the authorization endpoint an unknown app or an unregistered return address is never
redirected to (RFC 9700: no open redirector), so the person is left on Keyfob's page. The
protocol's own description ("unknown client_id") means nothing to them; it is kept at the
end, quoted, for the app's developer. Framework-free: ``routes.py`` renders the words.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyfob.oauth.errors import OAuthError


@dataclass(frozen=True)
class SignInWords:
    title: str
    message: str
    next_step: str


def _for_developer(exc: OAuthError) -> str:
    return f" If it keeps happening, tell the app's developer: “{exc.description or exc.error}”."


def sign_in_words(exc: OAuthError, issuer: str) -> SignInWords:
    """The page for an authorization request that cannot be sent back to its app."""
    description = exc.description or exc.error
    if description == "unknown client_id":
        return SignInWords(
            "Keyfob does not know this app",
            "The app that sent you here is not registered with this Keyfob: it may have "
            "been deleted, or it may be set up for a different Keyfob server.",
            "Go back to the app and start signing in again from there, and check that it "
            f"uses this Keyfob's address ({issuer})." + _for_developer(exc),
        )
    if description.startswith("redirect_uri does not match"):
        return SignInWords(
            "Keyfob will not send you back to that address",
            "The link asks Keyfob to send you back to an address this app never "
            "registered. A stranger's site could use such a link to catch your sign-in, "
            "so Keyfob stops here and nothing was shared.",
            "Do not use this link again. Open the app yourself (type its address or use "
            "your bookmark) and sign in from there." + _for_developer(exc),
        )
    return SignInWords(
        "This sign-in link does not work",
        "The app that sent you here is not set up correctly with this Keyfob, so Keyfob "
        "will not send you back to it.",
        "Go back to the app and try signing in again." + _for_developer(exc),
    )
