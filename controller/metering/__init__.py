"""GPU-hour metering, pure: what pods consumed (`usage`) and what a budget's status says (`budgets`).

The operator feeds it pod records and persists ledgers; `comptroller report` reads the same
records and statuses. Neither door carries its own copy: both import from here, and import-linter
keeps this package free of the operator, the webhook and any client (docs/metering.md).
"""
