"""The paper: results tables, figures, LaTeX helpers, the generated macros, the PDF build. Imports neither torch nor transformers."""
