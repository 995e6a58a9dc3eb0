"""Shared contracts (schemas, actions, lake layout) and the `pinrec` command line."""
