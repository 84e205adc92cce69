"""The provider-terms registry: which credentials may serve third-party apps, and why.

The rules are data (``registry.RULES``), each with its source and the date it was checked,
so a refusal can cite the rule instead of a vague "not allowed". ``check_credential`` is
called when a provider is linked *and* before every upstream call, so a credential that
was stored before a rule existed is still never sent upstream.
"""

from keyfob.terms.check import Verdict, check_credential, clean_credential
from keyfob.terms.registry import RULES, Rule

__all__ = ["RULES", "Rule", "Verdict", "check_credential", "clean_credential"]
