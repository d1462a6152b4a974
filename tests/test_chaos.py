"""The chaos suite: a real worker (on a stack of its own per scenario) loses nothing to poison messages, its own
SIGKILL, a failover, a Redis crash or a broker restart; `fraudmon chaos` prints the same accounting as a table."""

from __future__ import annotations

import pytest

from fraudmon.core.config import load_settings
from fraudmon.tools.chaos import SCENARIOS, TABLE_HEADER, run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_record_ends_as_one_decision_or_one_dead_letter(scenario, tmp_path):
    acc = run_scenario(scenario, base=load_settings(environ={}), workdir=tmp_path)
    report = "\n".join([TABLE_HEADER, acc.row(), *acc.notes, *acc.misnamed[:20]])
    assert acc.sent > 0 and acc.ok, report
    if scenario == "poison":
        assert acc.malformed >= 200, report  # every kind of the generator, each between valid events
    if scenario == "failover":
        assert acc.max_delay_s < 20, f"a killed worker's partitions moved too slowly\n{report}"
    if scenario == "redis-kill":
        assert acc.degraded > 0, f"Redis was never down while events were decided\n{report}"
