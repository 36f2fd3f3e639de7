"""Flow matching: paths, priors, solvers, guidance. Imports no model and no data code."""
