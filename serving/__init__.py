"""The serving layer: signal service, serve-time merge of candidates with fresh signals, HTTP API."""
