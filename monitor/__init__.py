"""Drift monitoring: reference profiles, mergeable batch sketches, drift statistics over
windows, the monitor task, and the retraining webhook with its durable outbox."""
