"""Delivery: what the engine uses to deliver one message (lease, transport, messages,
templating, signed unsubscribe tokens). Imports storage and models only; never a page.
"""
