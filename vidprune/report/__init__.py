"""Reports over result tables: Pareto fronts, trade-off plots and summary tables."""
