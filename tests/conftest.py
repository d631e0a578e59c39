import os
import sys

import pytest

from hypothesis import HealthCheck, settings

# Default run: reproducible examples (derandomized) so CI is stable; `--hypothesis-profile=explore`
# draws fresh examples each run.
settings.register_profile("default", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny tensors: one torch thread avoids OpenMP stalls on a shared 2-core machine.

    Only acts when a test module already imported torch (conftest itself never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)            # reproducible weights for models built in a test
    yield
    torch.set_num_threads(n)
