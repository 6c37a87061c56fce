"""Switching discovery between device-based and per-entity clears the other form's retained configs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Broker, Daemon, Observer
from tests.sound import wait_until

DEVICE = "homeassistant/device/{site}/config"


def retained_configs(broker: Broker, site: str) -> dict[str, bytes]:
    """What a client subscribing now gets: the retained discovery configs of this site."""
    late = Observer(broker.port)
    try:
        late.client.subscribe("homeassistant/#", qos=1)
        late.publish("homeassistant/sentinel", "last", retain=True)
        wait_until(lambda: late.on("homeassistant/sentinel"), 10, "the retained sentinel")
        return {
            m.topic: m.payload
            for m in late.messages
            if m.retain and m.topic.startswith("homeassistant/") and f"/{site}/" in m.topic and m.payload
        }
    finally:
        late.close()


@pytest.mark.e2e
def test_switching_the_discovery_form_clears_the_other_forms_configs(
    make_daemon: Callable[..., Daemon], broker: Broker, observer: Observer
) -> None:
    observer.client.subscribe("homeassistant/#", qos=1)
    daemon = make_daemon()
    device = DEVICE.format(site=daemon.site)
    wait_until(lambda: any(m.payload for m in observer.on(device)), 30, "device-based discovery")
    assert list(retained_configs(broker, daemon.site)) == [device]

    daemon.stop()
    seen = len(observer.messages)
    daemon.start(HOMEASSISTANT__PER_ENTITY="true")
    entity = f"homeassistant/event/{daemon.site}/speech/config"  # the last per-entity config published
    wait_until(lambda: any(m.topic == entity for m in observer.messages[seen:]), 30, "per-entity discovery")
    configs = retained_configs(broker, daemon.site)
    assert device not in configs and len(configs) == 16, sorted(configs)  # one per entity

    daemon.stop()
    seen = len(observer.messages)
    daemon.start()
    wait_until(lambda: any(m.topic == device and m.payload for m in observer.messages[seen:]), 30, "device form")
    assert list(retained_configs(broker, daemon.site)) == [device]
