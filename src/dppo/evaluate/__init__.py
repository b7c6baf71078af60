"""Evidence: paired win rates, the claims' verdicts, the premise statistics, the penalty scale. Imports neither torch nor transformers."""
