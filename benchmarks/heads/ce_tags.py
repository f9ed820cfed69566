"""How benchmarks/heads/cross_encoder.sh tags what it records: `ce-sS` for a
100-step run of seed S, `ce-stepsN-[PRECISION-]sS` for other budgets, then
the split and the first stage (`pretrained`, `cosine-sS`,
`cosine-stepsN-sS`). The reports read the tags through this one rule."""
import re


def at_100_steps(tag):
    """Whether the tag is a 100-step run's (the baseline of #24)."""
    return re.match(r"ce-s\d+ ", tag) is not None
