"""Evidence: paired win rates, which runs a figure shows, the claims' verdicts, the premise statistics, the penalty scale. Imports neither torch nor transformers."""
