"""The batch layer: one module per daily job (read -> pure transform -> write) and the lake adapter."""
