"""Forecasting data: parallel collection, shards with a manifest, merged memory-mapped datasets."""
