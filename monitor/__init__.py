"""Drift monitoring: reference profiles now; batch sketches and drift statistics later."""
