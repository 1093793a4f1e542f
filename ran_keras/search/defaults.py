"""Defaults of the searches, importable without numpy (the command line shows them in --help)."""

#: the paper's RAN-i search space and budgets (Sec. 3.4): width and depth multiplier ranges, and
#: (name, MACs, params) per budget
PAPER_WM = (0.25, 1.6)
PAPER_DM = (0.6, 2.56)
PAPER_BUDGETS = (("H1", 3.3e9, 21e6), ("H2", 4.5e9, 28e6), ("H3", 8.5e9, 50e6))
#: random samples when neither a sample count nor a grid is given (the paper's 800)
DEFAULT_SAMPLES = 800
#: the most candidates one sweep evaluates (numpy holds them all at once: 5M take about 0.8 GB and 5 s)
MAX_CANDIDATES = 5_000_000
