"""Plan tests: ``incident-sla-sidecar test-plan FILE...``, scenarios of a response plan.

- :mod:`~sidecar.plantest.model`: the test file, field by field;
- :mod:`~sidecar.plantest.runner`: running each scenario on a simulated clock
  (:mod:`sidecar.simulate`) and comparing its expectations.
"""

from sidecar.plantest.runner import Outcome, load_test_file, run_file, run_paths

__all__ = ["Outcome", "load_test_file", "run_file", "run_paths"]
