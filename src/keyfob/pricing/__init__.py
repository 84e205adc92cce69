"""Prices, worst-case quotes and exact costs of calls, in integer micro-USD."""
