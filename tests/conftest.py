import os

from hypothesis import HealthCheck, settings

# Default run: reproducible examples (derandomized) so CI is stable; `--hypothesis-profile=explore`
# draws fresh examples each run.
settings.register_profile("default", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
