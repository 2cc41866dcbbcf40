"""Reports over result tables: Pareto fronts, trade-off plots, summary tables and the interactive HTML page."""
