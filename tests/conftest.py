"""Suite-wide settings: in CI (``CI`` set), property-based tests draw the same examples on every run.

Locally hypothesis explores new random examples each run, which is how the fuzz tests find new failures; in
CI a run must be reproducible, so the examples are derived from each test's source instead (``derandomize``).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
