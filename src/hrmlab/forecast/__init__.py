"""Forecasters: map obstacle histories to future positions over the planning horizon."""
