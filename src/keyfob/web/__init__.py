"""The person's pages: first-run setup, login, dashboard, consent, apps and providers."""
