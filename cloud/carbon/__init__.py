"""Carbon accounting: formulas, factor tables, per-source methods, accounts and reports (issue 13).

``formulas`` and ``factors`` import only the standard library, so the auditor's calculator
(``carbonlink carbon formula``) runs without the cloud extra. Everything here is pure and
deterministic: the same inputs give the same Decimal figures and byte-identical reports.
"""
