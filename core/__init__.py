"""Core: campaigns, leads, the CSV reader and import, suppressions, stats.

Imports storage, models and delivery only.
"""
