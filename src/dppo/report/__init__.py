"""The paper: the results tables (schema, LaTeX, files), figures, LaTeX helpers, the generated macros, the PDF build. Imports neither torch nor transformers."""
