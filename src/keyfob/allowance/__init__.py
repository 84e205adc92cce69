"""Allowances: how much an app may spend for a person, and the reserve/settle protocol."""
