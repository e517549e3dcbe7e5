"""Storage: SQLite pragmas, BEGIN IMMEDIATE, write sessions, the schema's triggers, time helpers.

The lowest layer: imports nothing else of SendOnce.
"""
