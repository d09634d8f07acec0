"""The fault suite's scenarios on the stream transport, where they apply: the same faults, load and checks
as tests/fault/test_faults.py, on a stack whose relays declare the exchange's stream and whose resource
instances read it over RabbitMQ's stream protocol, each through its own TCP proxy (rstream's load-balancer
mode, so the proxy is not bypassed). The scenarios' names in the table end in "[stream]".

Left out, to keep the suite's time: the relay leader's SIGSTOP, the database restart and everything crashed
at once, which exercise the relay, the database and a restart, as the kill -9 scenarios here do already.
"""

from __future__ import annotations

import pytest

from tests.fault.conftest import Suite
from tests.fault.test_faults import (
    test_broker_unreachable,
    test_every_broker_link_blackholed,
    test_one_resource_instance_cut_from_broker_and_auth,
    test_relay_leader_killed,
    test_resource_instance_killed_and_restarted,
    test_resource_instance_paused,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TRANSPORT = "stream"  # read by the suite fixture (tests/fault/conftest.py)


async def test_every_stream_link_goes_through_its_proxy(suite: Suite) -> None:
    # Without rstream's load-balancer mode the data connection would go to the host the broker advertises,
    # straight to the stream port: a broker cut at the proxy would then cut nothing of the stream.
    stack = suite.stack
    for i, process in enumerate(stack.resource):
        proxy = stack.broker_proxies[len(stack.auth) + i]
        ports = process.remote_ports()
        assert proxy.port in ports
        assert stack.stream_port not in ports


__all__ = [
    "test_every_stream_link_goes_through_its_proxy",
    "test_broker_unreachable",
    "test_every_broker_link_blackholed",
    "test_one_resource_instance_cut_from_broker_and_auth",
    "test_relay_leader_killed",
    "test_resource_instance_killed_and_restarted",
    "test_resource_instance_paused",
]
