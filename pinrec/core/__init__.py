"""The ground floor every layer stands on: contracts (schemas, actions, budgets), the lake layout
(every table, version name, pointer and path), the lake adapter behind one interface (delta-rs
and delta-spark back ends), the sequences storage and its one read path, user errors and the
shared command-line arguments.

It imports nothing of ours outside itself, and only stdlib, numpy, pyarrow and deltalake at
module level (pyspark only inside the delta-spark back end's functions), so the batch layer
(`jobs`), the speed layer (`streaming`), `serving` and the model library can all import it
without importing each other (tests/unit/test_layers.py keeps it so)."""
