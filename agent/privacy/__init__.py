"""Desensitization at the edge: the deployment's privacy policy applied to record tables.

policy.py loads the TOML policy; apply.py runs it over a Table (zones, generalization, pseudonyms,
text redaction); geo.py, redact.py and dp.py are its pure parts; budget.py is the persisted
differential-privacy ledger. docs/privacy.md describes the format and the guarantees.
"""
