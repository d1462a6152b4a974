"""Live lists: the entry format and its checks, the in-memory lookups and their expiry, and, on the real broker,
`fraudmon lists add|remove|show`, the audit trail, and a follower that loads, follows, expires, restarts and skips
malformed records."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from fraudmon.cli.lists import lists_app
from fraudmon.core.config import Settings
from fraudmon.tools import lists as tool
from fraudmon.tools.stack import free_port
from stream_app.lists import (
    MAX_VALUE_CHARS,
    NEVER,
    ListEntry,
    ListFollower,
    ListsError,
    ListStore,
    ListsUnavailable,
    StaticLists,
    check_list_name,
    check_value,
    ensure_lists_topics,
    load_static_lists,
    parse_record,
    parse_ttl_ms,
    printable,
)

NOW = 1_790_000_000_000  # a fixed "now" for the pure tests (2026-09-21)


def entry(value: str = "203.0.113.7", list_name: str = "blocked_ips", ttl_ms: int | None = None,
          now_ms: int = NOW) -> ListEntry:
    return ListEntry.new(list_name, value, reason="card testing", author="ana", ttl_ms=ttl_ms, now_ms=now_ms)


# ------------------------------------------------------------------------------------------ checks (pure)


@pytest.mark.parametrize("name", ["blocked_ips", "a", "x" * 64, "trusted_accounts_2"])
def test_valid_list_names(name: str) -> None:
    assert check_list_name(name) == name


@pytest.mark.parametrize("name", ["", "Blocked", "1ips", "_ips", "x" * 65, "ips:x", "ips-x", "ips\n", "ïps", 7])
def test_invalid_list_names_are_refused(name) -> None:
    with pytest.raises(ListsError, match="list name"):
        check_list_name(name)


@pytest.mark.parametrize("value", ["203.0.113.7", "acc-42", "2001:db8::1", "dev 9", "ünïcode-✓", "x" * MAX_VALUE_CHARS])
def test_valid_values(value: str) -> None:
    assert check_value(value) == value


@pytest.mark.parametrize("value, why", [
    ("", "empty"), ("x" * (MAX_VALUE_CHARS + 1), "over 256"), ("1.2.3.4\n", "control character '\\\\n'"),
    ("\x1b[31mred", "control character '\\\\x1b'"), ("a\x00b", "control character"), ("a\u202eb", "\\\\u202e"),
    ("a\u200bb", "control character"), ("\ud800", "control character"), (" 1.2.3.4", "spaces around it"),
    ("a\tb", "control character"),
])
def test_values_with_control_characters_or_out_of_bounds_are_refused(value: str, why: str) -> None:
    with pytest.raises(ListsError, match=why) as caught:
        check_value(value)
    assert str(caught.value).isprintable()  # the error itself shows the value escaped


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("203.0.113.7") == "203.0.113.7"
    assert printable("\x1b[2Jx\ny\u202e\\") == "\\x1b[2Jx\\ny\\u202e\\\\"
    assert printable("a" * 100, 10) == "a" * 9 + "…"


@pytest.mark.parametrize("text, ms", [("30s", 30_000), ("15m", 900_000), ("24h", 86_400_000), ("7d", 604_800_000),
                                      ("2w", 1_209_600_000), ("1d12h", 129_600_000), (" 24H ", 86_400_000)])
def test_ttl_durations(text: str, ms: int) -> None:
    assert parse_ttl_ms(text) == ms


@pytest.mark.parametrize("text", ["24", "h", "-1h", "0h", "1.5h", "3651d", "24 h", "1h 30m", "", "1y", "99999999999s"])
def test_invalid_ttls_are_refused(text: str) -> None:
    with pytest.raises(ListsError, match="TTL"):
        parse_ttl_ms(text)


def test_an_entry_round_trips_through_its_record() -> None:
    added = entry(ttl_ms=86_400_000)
    assert added.key == b"blocked_ips:203.0.113.7"
    data = orjson.loads(added.to_json())
    assert data == {"list": "blocked_ips", "value": "203.0.113.7", "reason": "card testing", "author": "ana",
                    "added_at": "2026-09-21T14:13:20.000Z", "expires_at": "2026-09-22T14:13:20.000Z"}
    assert parse_record(added.key, added.to_json()) == ("blocked_ips", "203.0.113.7", added)
    assert parse_record(b"blocked_ips:203.0.113.7", None) == ("blocked_ips", "203.0.113.7", None)
    assert parse_record(b"trusted:2001:db8::1", None)[1] == "2001:db8::1"  # the value may hold colons


def _value(**changes) -> bytes:
    return orjson.dumps({**entry().to_dict(), **changes})


@pytest.mark.parametrize("key, value, why", [
    (None, _value(), "no key"),
    (b"\xff\xfe:1", _value(), "not UTF-8"),
    (b"blocked_ips", _value(), "not <list>:<value>"),
    (b"Blocked:1.2.3.4", _value(), "list name"),
    (b"blocked_ips:\x1b", None, "control character"),
    (b"blocked_ips:203.0.113.7", b"{not json", "not JSON"),
    (b"blocked_ips:203.0.113.7", b"[1]", "JSON object"),
    (b"blocked_ips:203.0.113.7", b"x" * 10_000, "over"),
    (b"blocked_ips:203.0.113.7", _value(value="198.51.100.1"), "another entry"),
    (b"blocked_ips:203.0.113.7", orjson.dumps({"list": "blocked_ips", "value": "203.0.113.7"}), "lacks reason"),
    (b"blocked_ips:203.0.113.7", _value(expires_at="tomorrow"), "expires_at"),
    (b"blocked_ips:203.0.113.7", _value(added_at=True), "added_at"),
    (b"blocked_ips:203.0.113.7", _value(reason=7), "reason must be text"),
    (b"blocked_ips:203.0.113.7", _value(author=""), "author must not be empty"),
])
def test_malformed_records_are_refused_with_the_reason(key, value, why: str) -> None:
    with pytest.raises(ListsError, match=why):
        parse_record(key, value)


# -------------------------------------------------------------------------------------------- lookups (pure)


def test_a_view_answers_in_until_the_entry_expires_by_its_clock() -> None:
    store = ListStore()
    store.put(entry("1.1.1.1"))
    store.put(entry("2.2.2.2", ttl_ms=60_000))
    before, after = store.snapshot(NOW + 59_999), store.snapshot(NOW + 60_000)
    assert "1.1.1.1" in before["blocked_ips"] and "2.2.2.2" in before["blocked_ips"]
    assert "1.1.1.1" in after["blocked_ips"] and "2.2.2.2" not in after["blocked_ips"]
    assert "9.9.9.9" not in before["blocked_ips"]
    assert "1.1.1.1" not in before["trusted_accounts"]  # a list no one added to reads as empty
    assert store.lists["blocked_ips"]["1.1.1.1"] == NEVER


def test_expire_drops_only_entries_still_holding_that_expiry() -> None:
    store = ListStore()
    store.put(entry("a", ttl_ms=1000))
    store.put(entry("b", ttl_ms=1000))
    store.put(entry("a"))  # re-added without a TTL: the old expiry in the heap must not drop it
    store.put(entry("c", ttl_ms=5000))
    store.delete("blocked_ips", "c")
    assert store.expire(NOW + 10_000) == 1
    assert store.lists["blocked_ips"] == {"a": NEVER}


def test_a_tombstone_removes_and_a_malformed_record_changes_nothing() -> None:
    store = ListStore()
    store.apply(entry().key, entry().to_json())
    with pytest.raises(ListsError):
        store.apply(entry().key, b"garbage")
    assert "203.0.113.7" in store.snapshot(NOW)["blocked_ips"]
    store.apply(entry().key, None)
    assert "203.0.113.7" not in store.snapshot(NOW)["blocked_ips"]


def test_static_lists_from_a_json_lines_file(tmp_path) -> None:
    path = tmp_path / "lists.jsonl"
    path.write_bytes(b"\n".join([entry("1.1.1.1").to_json(), b"", entry("acc-1", "trusted_accounts").to_json(),
                                 entry("2.2.2.2", ttl_ms=1000).to_json()]))
    lists = StaticLists.from_file(path).current(NOW + 500)
    assert "1.1.1.1" in lists["blocked_ips"] and "2.2.2.2" in lists["blocked_ips"]
    assert "acc-1" in lists["trusted_accounts"] and "acc-1" not in lists["blocked_ips"]
    assert "2.2.2.2" not in load_static_lists(path, NOW + 1000)["blocked_ips"]
    path.write_bytes(entry().to_json() + b'\n{"list": "blocked_ips"}\n')
    with pytest.raises(ListsError, match=r"lists.jsonl:2: lacks value"):
        StaticLists.from_file(path)
    path.write_text("not json\n")
    with pytest.raises(ListsError, match=r"lists.jsonl:1: not a JSON object"):
        StaticLists.from_file(path)


# ------------------------------------------------------------------------------------------ on the broker


@pytest.fixture
def lists_settings(settings: Settings, kafka_bootstrap: str) -> Settings:
    """The session's settings with a lists topic and an audit topic of this test's own, created as the stack
    creates them."""
    run = uuid.uuid4().hex[:8]
    topics = settings.topics.model_copy(update={"lists": f"lists-{run}", "lists_audit": f"lists-audit-{run}"})
    ensure_lists_topics(kafka_bootstrap, topics)
    return settings.model_copy(update={"topics": topics})


@pytest.fixture
def follow(lists_settings: Settings) -> Iterator[Callable[..., ListFollower]]:
    """`follow(settings=lists_settings) -> ListFollower`, started and loaded; stopped after the test."""
    started: list[ListFollower] = []

    def start(settings: Settings = lists_settings) -> ListFollower:
        follower = ListFollower(settings, poll_s=0.1).start()
        started.append(follower)
        follower.wait_loaded(30)
        return follower

    yield start
    for follower in started:
        follower.stop()


def wait_until(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `check()` holds; fails after `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not true within {timeout_s}s")
        time.sleep(0.005)
    return time.monotonic() - start


def read_all(settings: Settings, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records = []
        while any(consumer.position(p) < ends[p] for p in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


integration = pytest.mark.integration


@integration
def test_the_stack_creates_a_compacted_lists_topic_and_a_kept_audit_topic(lists_settings: Settings,
                                                                           kafka_bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, lists_settings.topics.lists),
                                            ConfigResource(ConfigResourceType.TOPIC,
                                                           lists_settings.topics.lists_audit)],
                                           config_filter="all")
    finally:
        admin.close()
    (topics,) = described.values()  # {resource type: {topic: {config key: {config data}}}}
    lists, audit = topics[lists_settings.topics.lists], topics[lists_settings.topics.lists_audit]
    assert lists["cleanup.policy"]["value"] == "compact" and lists["min.cleanable.dirty.ratio"]["value"] == "0.1"
    assert audit.get("cleanup.policy", {"value": "delete"})["value"] == "delete"
    assert audit["retention.ms"]["value"] == "-1"
    assert ensure_lists_topics(kafka_bootstrap, lists_settings.topics) == []  # idempotent


@integration
def test_add_show_remove_and_the_audit_trail(lists_settings: Settings) -> None:
    tool.add(lists_settings, "blocked_ips", "203.0.113.7", ttl="24h", reason="card testing", author="ana")
    tool.add(lists_settings, "blocked_ips", "198.51.100.1", author="bo")
    tool.add(lists_settings, "trusted_accounts", "acc-42", reason="VIP", author="ana")
    shown = tool.show(lists_settings, "blocked_ips")
    assert [(e.value, e.reason, e.author) for e in shown] == [("203.0.113.7", "card testing", "ana"),
                                                              ("198.51.100.1", "", "bo")]
    assert shown[0].expires_at_ms - shown[0].added_at_ms == 86_400_000 and shown[1].expires_at_ms is None
    tool.remove(lists_settings, "blocked_ips", "203.0.113.7", reason="false positive", author="cy")
    assert [e.value for e in tool.show(lists_settings, "blocked_ips")] == ["198.51.100.1"]
    assert [e.value for e in tool.show(lists_settings, "trusted_accounts")] == ["acc-42"]
    audit = [(r.key, orjson.loads(r.value)) for r in read_all(lists_settings, lists_settings.topics.lists_audit)]
    assert [(key, a["action"], a["author"], a["reason"]) for key, a in audit] == [
        (b"blocked_ips:203.0.113.7", "add", "ana", "card testing"), (b"blocked_ips:198.51.100.1", "add", "bo", ""),
        (b"trusted_accounts:acc-42", "add", "ana", "VIP"),
        (b"blocked_ips:203.0.113.7", "remove", "cy", "false positive")]
    assert audit[0][1]["expires_at"] and audit[0][1]["at"].endswith("Z") and audit[1][1]["expires_at"] is None
    records = read_all(lists_settings, lists_settings.topics.lists)
    assert records[-1].key == b"blocked_ips:203.0.113.7" and records[-1].value is None  # the tombstone


@integration
def test_a_follower_sees_an_add_and_a_remove_within_two_seconds(lists_settings: Settings, follow) -> None:
    follower = follow()
    assert "203.0.113.7" not in follower.current()["blocked_ips"]
    called = time.monotonic()
    tool.add(lists_settings, "blocked_ips", "203.0.113.7", author="ana")
    returned = time.monotonic()
    wait_until(lambda: "203.0.113.7" in follower.current()["blocked_ips"], 2.0)
    seen = time.monotonic()
    tool.remove(lists_settings, "blocked_ips", "203.0.113.7", author="ana")
    gone_after = wait_until(lambda: "203.0.113.7" not in follower.current()["blocked_ips"], 2.0)
    assert seen - called < 2.0
    print(f"\nadd() took {(returned - called) * 1000:.0f} ms; visible {(seen - returned) * 1000:.0f} ms after it "
          f"returned ({(seen - called) * 1000:.0f} ms after the call); gone {gone_after * 1000:.0f} ms after remove()")


@integration
def test_an_entry_expires_by_the_wall_clock(lists_settings: Settings, follow) -> None:
    follower = follow()
    tool.add(lists_settings, "blocked_devices", "dev-9", ttl=1500, author="ana")  # milliseconds
    wait_until(lambda: "dev-9" in follower.current()["blocked_devices"], 2.0)
    wait_until(lambda: "dev-9" not in follower.current()["blocked_devices"], 3.0)  # no record: the clock
    wait_until(lambda: "dev-9" not in follower.store.lists["blocked_devices"], 2.0)  # and dropped from memory
    assert [e.value for e in tool.show(lists_settings, "blocked_devices", include_expired=True)] == ["dev-9"]
    assert tool.show(lists_settings, "blocked_devices") == []


@integration
def test_a_new_follower_loads_the_current_state_before_it_says_loaded(lists_settings: Settings, follow) -> None:
    producer = KafkaProducer(bootstrap_servers=lists_settings.kafka.bootstrap_servers, acks="all", linger_ms=5)
    for i in range(50):
        producer.send(lists_settings.topics.lists, key=entry(f"10.0.0.{i}").key, value=entry(f"10.0.0.{i}").to_json())
    for i in range(0, 50, 2):
        producer.send(lists_settings.topics.lists, key=entry(f"10.0.0.{i}").key, value=None)
    producer.flush()
    producer.close()
    tool.add(lists_settings, "blocked_ips", "10.0.0.0", reason="back again", author="ana")
    follower = follow()  # returns once loaded: no waiting for the follow-up records
    lists = follower.current()
    assert sorted(follower.store.lists["blocked_ips"]) == sorted(["10.0.0.0"] + [f"10.0.0.{i}" for i in
                                                                                    range(1, 50, 2)])
    assert "10.0.0.0" in lists["blocked_ips"] and "10.0.0.2" not in lists["blocked_ips"]
    assert follower.records == 76 and follower.malformed == 0


@integration
def test_malformed_records_are_skipped_and_the_follower_goes_on(lists_settings: Settings, follow, caplog) -> None:
    tool.add(lists_settings, "blocked_ips", "203.0.113.7", author="ana")
    producer = KafkaProducer(bootstrap_servers=lists_settings.kafka.bootstrap_servers, acks="all")
    topic = lists_settings.topics.lists
    junk = [(b"\xff\xfe:1", b"{}"), (b"no-colon", b"{}"), (b"blocked_ips:203.0.113.7", b"{oops"),
            (b"blocked_ips:203.0.113.7", _value(value="6.6.6.6")), (b"blocked_ips:\x1b[2J", None),
            (b"blocked_ips:1.2.3.4", b"x" * 20_000)]
    for key, value in junk:  # (a compacted topic itself refuses records without a key)
        producer.send(topic, key=key, value=value).get(timeout=10)
    follower = follow()
    assert follower.malformed == len(junk)
    assert "203.0.113.7" in follower.current()["blocked_ips"]  # a malformed record of its key did not remove it
    for key, value in junk:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    tool.add(lists_settings, "blocked_ips", "198.51.100.1", author="ana")
    wait_until(lambda: "198.51.100.1" in follower.current()["blocked_ips"], 2.0)
    assert follower.malformed == 2 * len(junk) and follower._thread.is_alive()
    assert "\x1b" not in caplog.text and "skipped malformed record" in caplog.text


@integration
def test_wait_loaded_says_why_when_kafka_does_not_answer(settings: Settings) -> None:
    nowhere = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})})
    follower = ListFollower(nowhere).start()
    try:
        with pytest.raises(ListsUnavailable, match=r"was not read within 7s: no Kafka broker answers"):
            follower.wait_loaded(7)
    finally:
        started = time.monotonic()
        follower.stop()
        assert time.monotonic() - started < 6


# -------------------------------------------------------------------------------------------- the commands


@integration
def test_the_commands_print_escaped_values_and_exit_cleanly(lists_settings: Settings, tmp_path,
                                                            monkeypatch) -> None:
    config = tmp_path / "monitor.yaml"
    config.write_text(orjson.dumps(lists_settings.model_dump(mode="json")).decode())  # JSON is YAML
    runner = CliRunner()
    monkeypatch.setenv("USER", "dee")
    added = runner.invoke(lists_app, ["add", "blocked_ips", "203.0.113.7", "--ttl", "24h", "--reason",
                                           "card testing", "-c", str(config)])
    assert added.exit_code == 0, added.output
    assert "added 203.0.113.7 to blocked_ips" in added.output and "by dee" in added.output
    producer = KafkaProducer(bootstrap_servers=lists_settings.kafka.bootstrap_servers, acks="all")
    sneaky = ListEntry(list="blocked_ips", value="x\x1b[2Jy", reason="r\u202e", author="mallory",
                       added_at_ms=NOW, expires_at_ms=None)  # bypassing the checks, as a rogue producer could
    producer.send(lists_settings.topics.lists, key=sneaky.key, value=sneaky.to_json())
    producer.send(lists_settings.topics.lists, key=b"blocked_ips:expired", value=entry(
        "expired", ttl_ms=1000, now_ms=NOW).to_json())
    producer.flush()
    producer.close()
    shown = runner.invoke(lists_app, ["show", "blocked_ips", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "blocked_ips: 1 entries (1 expired, hidden; --expired shows them)" in shown.output
    assert "203.0.113.7" in shown.output and "card testing" in shown.output and "never" not in shown.output
    assert "\x1b" not in shown.output and "malformed" in shown.output  # the rogue value is refused, not printed
    with_expired = runner.invoke(lists_app, ["show", "blocked_ips", "--expired", "-c", str(config)])
    assert "(expired)" in with_expired.output
    as_json = runner.invoke(lists_app, ["show", "blocked_ips", "--json", "-c", str(config)])
    (tmp_path / "lists.jsonl").write_text(as_json.stdout)
    assert "203.0.113.7" in load_static_lists(tmp_path / "lists.jsonl")["blocked_ips"]
    every = runner.invoke(lists_app, ["show", "-c", str(config)])
    assert "blocked_ips" in every.output and "1 entries (1 expired)" in every.output
    removed = runner.invoke(lists_app, ["remove", "blocked_ips", "203.0.113.7", "-c", str(config)])
    assert removed.exit_code == 0 and "removed 203.0.113.7 from blocked_ips" in removed.output
    refused = runner.invoke(lists_app, ["add", "Blocked", "1.2.3.4", "-c", str(config)])
    assert refused.exit_code == 2 and "error: list name 'Blocked'" in refused.output
    refused = runner.invoke(lists_app, ["add", "blocked_ips", "1.2.3.4", "--ttl", "soon", "-c", str(config)])
    assert refused.exit_code == 2 and "is not a duration" in refused.output
    refused = runner.invoke(lists_app, ["add", "blocked_ips", "1.2.3.4\x1b", "-c", str(config)])
    assert refused.exit_code == 2 and "control character" in refused.output and "\x1b" not in refused.output


def test_the_commands_exit_1_with_a_clear_message_when_kafka_is_down(tmp_path) -> None:
    config = tmp_path / "monitor.yaml"
    config.write_text(f"kafka:\n  bootstrap_servers: 127.0.0.1:{free_port()}\n")
    runner = CliRunner()
    for args in (["add", "blocked_ips", "1.2.3.4"], ["remove", "blocked_ips", "1.2.3.4"], ["show", "blocked_ips"]):
        result = runner.invoke(lists_app, [*args, "-c", str(config)])
        assert result.exit_code == 1, (args, result.output)
        assert "error: no Kafka broker answers at 127.0.0.1:" in result.output and "fraudmon stack up" in result.output
        assert isinstance(result.exception, SystemExit)  # typer.Exit: no traceback


def test_every_lists_command_has_help() -> None:
    runner = CliRunner()
    for args in ([], ["add"], ["remove"], ["show"]):
        result = runner.invoke(lists_app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
