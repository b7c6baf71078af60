"""LaTeX text helpers shared by every generated table and macro file: escaping, macro names
(letters only), number formatting, booktabs tables and the ``\\newcommand`` file."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

NA = "n/a"
_DIGIT_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    # Labels such as "unll 60k → DPO" or "α=0.1" must compile under pdflatex.
    "→": r"$\rightarrow$", "α": r"$\alpha$", "β": r"$\beta$", "ζ": r"$\zeta$",
    "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$",
}


_MACRO_NAME = re.compile(r"^[A-Za-z]+$")


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and a few Unicode symbols labels use)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def macro_name(*parts: str) -> str:
    """A valid LaTeX control-word name (letters only) in camelCase from free text.

    Digits are spelled out ("a0.1" -> "AZeroPointOne") since TeX command names cannot
    contain them; everything else that is not a letter separates words.
    """
    words: list[str] = []
    for part in parts:
        text = str(part).replace(".", " Point ")
        text = re.sub(r"\d", lambda m: f" {_DIGIT_WORDS[int(m.group())]} ", text)
        words.extend(w for w in re.split(r"[^A-Za-z]+", text) if w)
    if not words:
        raise ValueError(f"no letters to build a macro name from {parts!r}")
    head, *tail = words
    return head[0].lower() + head[1:] + "".join(w[0].upper() + w[1:] for w in tail)


def fmt_float(value, digits: int = 3) -> str:
    """Fixed-point number, or 'n/a' when missing (the paper still compiles)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{float(value):.{digits}f}"


def fmt_percent(value, digits: int = 1) -> str:
    r"""Share as a LaTeX percentage ('12.5\%'), or 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{100 * float(value):.{digits}f}\\%"


def render_macros(macros: Mapping[str, str], header: str | None = None) -> str:
    r"""One ``\newcommand`` line per macro; values go in verbatim (escape text first).

    Names must be letters only: TeX control words cannot contain digits or punctuation.
    """
    lines = [f"% {header}" if header else "% Generated file: do not edit."]
    for name, value in macros.items():
        if not _MACRO_NAME.match(name):
            raise ValueError(f"invalid LaTeX macro name {name!r}: letters only")
        value = str(value)
        if value.count("{") != value.count("}"):
            raise ValueError(f"unbalanced braces in the value of \\{name}: {value!r}")
        lines.append(f"\\newcommand{{\\{name}}}{{{value}}}")
    return "\n".join(lines) + "\n"


def latex_number(value: float) -> str:
    """Two significant digits; tiny or huge values as m x 10^e (math-safe in text mode)."""
    if value != value:  # NaN
        return "n/a"
    if math.isinf(value):
        return r"\ensuremath{\infty}" if value > 0 else r"\ensuremath{-\infty}"
    if value == 0:
        return "0"
    if 0.01 <= abs(value) < 1000:
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return rf"\ensuremath{{{mantissa}\times 10^{{{int(exponent)}}}}}"


# Typeset into box 0 first, then shrink it to the line width only if it is wider (\resizebox
# needs graphicx; without it the table keeps its natural width).
_FIT_TO_WIDTH = r"\ifdim\wd0>\linewidth\ifdefined\resizebox\resizebox{\linewidth}{!}{\box0}\else\box0\fi\else\box0\fi"


def booktabs_table(columns: str, header: str, body: list, caption: str, label: str, env: str = "table",
                   placement: str = "", fit: bool = True) -> str:
    """A booktabs table. ``body``: rows, each a list of cells (already LaTeX) or a line as is
    (``\\midrule``); ``fit``: shrunk to the line width when wider."""
    lines = [rf"\begin{{{env}}}{placement}", r"\centering", r"\small"]
    lines += [r"\setbox0=\hbox{%"] if fit else []
    lines += [rf"\begin{{tabular}}{{{columns}}}", r"\toprule", header + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" if isinstance(row, list) else row for row in body]
    lines += [r"\bottomrule", r"\end{tabular}}%", _FIT_TO_WIDTH] if fit else [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\caption{" + caption + "}", r"\label{" + label + "}", rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"
