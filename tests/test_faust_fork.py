"""The worker's fork of Faust's private code (`stream_app/faust_fork.py`) holds only for the faust-streaming and
aiokafka it was written for: these tests fail, saying what to re-check, as soon as either changes."""

from __future__ import annotations

import importlib.metadata

import pytest

from stream_app import faust_fork

RECHECK = (
    "stream_app/faust_fork.py copies or relies on private code of faust-streaming and aiokafka. Re-read, in the "
    "installed version, {what}, compare it with the fork (BatchConsumer._drain_messages is Faust's "
    "Consumer._drain_messages + getmany; BatchConsumer.ack_offsets is Consumer.ack; ConsumerThread sets "
    "AIOKafkaConsumer._fetch_max_wait_ms; the producer helpers call aiokafka's _wait_on_metadata and _partition), "
    "port what changed, then update WRITTEN_FOR and UPSTREAM (faust_fork.upstream_digest gives the new digests)."
)


@pytest.mark.parametrize("package", sorted(faust_fork.WRITTEN_FOR))
def test_the_installed_version_is_the_one_the_fork_was_written_for(package):
    installed, written_for = importlib.metadata.version(package), faust_fork.WRITTEN_FOR[package]
    assert installed == written_for, (
        f"{package} {installed} is installed, the Faust fork was written for {written_for}. "
        + RECHECK.format(what=", ".join(where for where in faust_fork.UPSTREAM
                                        if where.split(".")[0] == package.split("-")[0]))
    )


@pytest.mark.parametrize("where", sorted(faust_fork.UPSTREAM))
def test_the_upstream_code_the_fork_copies_is_unchanged(where):
    assert faust_fork.upstream_digest(where) == faust_fork.UPSTREAM[where], (
        f"{where} is not the code the Faust fork was written against. " + RECHECK.format(what=where))


def test_a_changed_upstream_function_is_noticed(monkeypatch):
    """The digest is of the installed source: an edit to it (here, a stand-in) changes the digest."""
    import faust.transport.consumer as consumer

    before = faust_fork.upstream_digest("faust.transport.consumer:Consumer.ack")

    def ack(self, message):  # a different body under the same name
        return True

    monkeypatch.setattr(consumer.Consumer, "ack", ack)
    assert faust_fork.upstream_digest("faust.transport.consumer:Consumer.ack") != before
