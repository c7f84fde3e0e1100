"""Measurements that are not tests: echo handling, wake word accuracy, endpointing, cost.

Run with `voice-device bench NAME`; each prints a table and can write JSON for comparison
between commits. They take minutes, so they are kept out of `scripts/test`.
"""
