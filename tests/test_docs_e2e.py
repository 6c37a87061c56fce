"""Every `mosquitto_pub` example of the README, docs/*.md and script/run's hint, run as a user runs it:
the real mosquitto_pub against a real daemon (site "kitchen", Cartesia's emulator with the default
fallbacks, the cache on). Each must be accepted and do what the docs say: a say ends `finished`, a set
shows in the state, a warm fills the cache, and nothing is answered with an error. A new example that
does not work fails here, not for the next newcomer."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import BASE, ROOT, Broker, Daemon, spoken_ok
from tests.sound import wait_until

pytestmark = pytest.mark.e2e

SITE = "kitchen"
DOCUMENTS = ["README.md", *(f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md"))), "script/run"]
# The README's "engine": "piper" example, on a speaker without Piper; a synchronized example's start on a
# machine whose clock is not synchronized (a test machine's often is not).
EXPECTED_WARNINGS = {"engine_unavailable", "clock_unsynchronized"}


def examples(source: str) -> list[str]:
    """The mosquitto_pub command lines a document shows: in code blocks, in inline code, or (script/run)
    the one it prints, its shell variables filled in as it fills them."""
    text = (ROOT / source).read_text()
    if source == "script/run":
        (line,) = re.findall(r"try: (mosquitto_pub [^\"]+)", text)
        return [line.replace("-h $host -p $port ", "").replace("$base/$site", f"{BASE}/{SITE}")]
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S))
    lines = [line for line in blocks.splitlines() if line.startswith("mosquitto_pub ")]
    inline = [span for span in re.findall(r"`(mosquitto_pub [^`]+)`", text) if span not in lines]
    return lines + inline


def test_the_documents_have_examples() -> None:
    assert len(examples("README.md")) > 20 and examples("docs/streaming.md") and examples("script/run")


class Walk:
    """Runs one document's examples in order on one daemon and checks each."""

    def __init__(self, daemon: Daemon, broker: Broker, emulator: CartesiaEmulator) -> None:
        self.daemon = daemon
        self.broker = broker
        self.emulator = emulator
        self.seen_errors = 0

    def run(self, line: str) -> None:
        args = shlex.split(line)
        topic = args[args.index("-t") + 1]
        if topic == "<topic>":  # "Clear it with mosquitto_pub -r -n -t <topic>": a retained say to clear first
            topic = f"{BASE}/{SITE}/say"
            args[args.index("-t") + 1] = topic
            self.daemon.say(b'{"id": "kept", "text": "Retained by mistake"}', retain=True)
            self.daemon.wait_for_error(lambda e: e["code"] == "retained_command_ignored")
            self.seen_errors = len(self.daemon.errors())
        payload = args[args.index("-m") + 1] if "-m" in args else ""
        before = {e["id"] for e in self.daemon.events()}
        states = len(self.daemon.states())
        command = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.broker.port), *args[1:]]
        subprocess.run(command, check=True, timeout=10)
        if not {"-r", "-n"} <= set(args):  # clearing a retained message: it is to do nothing at all
            self.check(topic.split("/", 2)[2], payload, before, states)
        self.no_errors(line)

    def check(self, leaf: str, payload: str, before: set[str], states: int) -> None:  # noqa: PLR0912 - one case per topic
        daemon = self.daemon
        body: Any = json.loads(payload) if payload[:1] in "{[" and payload else payload
        match leaf:
            case "say":
                request_id = body.get("id") if isinstance(body, dict) else None
                if request_id is None:  # its id was generated: the one queued now
                    wait_until(lambda: {e["id"] for e in daemon.events()} - before, 30, "the request queued")
                    (request_id,) = {e["id"] for e in daemon.events()} - before
                spoken_ok(daemon, request_id)
                if isinstance(body, dict) and body.get("engine") in ("piper", "espeak"):
                    assert self.emulator.contexts_for(body["text"]) == []  # spoken locally, never by Cartesia
            case "say/stream":
                if body.get("end"):
                    spoken_ok(daemon, body["id"])
                else:
                    daemon.wait_for_event(body["id"], "queued")
            case "set/volume":
                wait_until(lambda: daemon.states()[-1]["volume"] == int(body), 10, "the volume in the state")
            case "set/emotion":
                wait_until(lambda: daemon.states()[-1]["emotion"] == body, 10, "the emotion in the state")
            case "set/voice":  # the next request is spoken with it
                daemon.say(json.dumps({"id": f"voice-{states}", "text": "With the voice set"}))
                spoken_ok(daemon, f"voice-{states}")
                (context,) = self.emulator.contexts_for("With the voice set")
                frame = next(f for f in self.emulator.frames if f.get("context_id") == context.context_id)
                assert frame["voice"] == body
            case "set/quiet":
                wait_until(lambda: daemon.states()[-1]["quiet"] == (body == "ON"), 10, "quiet mode in the state")
                daemon.observer.publish(daemon.topic("set/quiet"), "OFF")  # the next examples are to be spoken
                wait_until(lambda: not daemon.states()[-1]["quiet"], 10, "quiet mode off again")
            case "cache/warm":
                for text in body:
                    wait_until(lambda text=text: self.emulator.contexts_for(text), 30, f"{text!r} synthesized")
            case "stop" | "skip" | "clear" | "cache/clear":
                pass  # acted on at once; nothing is playing; the check is that nothing complains
            case _:
                raise AssertionError(f"an example on a topic this walk does not know: {leaf}")

    def no_errors(self, line: str) -> None:
        """Nothing the example caused was answered with an error (a marker after it: handled after it)."""
        self.daemon.say(json.dumps({"id": f"marker-{self.seen_errors}"}).encode())
        self.daemon.wait_for_error(lambda e: e["id"] == f"marker-{self.seen_errors}")
        errors = self.daemon.errors()[self.seen_errors : -1]
        assert [e for e in errors if e["code"] not in EXPECTED_WARNINGS or e["severity"] != "warning"] == [], line
        self.seen_errors = len(self.daemon.errors())


@pytest.mark.parametrize("source", [source for source in DOCUMENTS if examples(source)])
def test_every_documented_mosquitto_pub_example_works(
    source: str,
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    broker: Broker,
) -> None:
    lines = examples(source)
    env = {k: v for k, v in cartesia_env.items() if k != "MQTT_SPEAKER_FALLBACK"}  # the default fallbacks
    daemon = make_daemon({**env, "MQTT_SPEAKER_CACHE__ENABLED": "true"}, site=SITE)
    walk = Walk(daemon, broker, emulator)
    for line in lines:
        try:
            walk.run(line)
        except Exception as exc:
            raise AssertionError(f"{source}: this example does not do what the docs say:\n{line}") from exc
