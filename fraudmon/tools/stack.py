"""The local stack without Docker: a real Kafka broker (KRaft, jars from Maven), Redis and Prometheus.

`up` is idempotent and waits until each service really answers; `down` stops only the processes `up` started
(their pid files under the data dir say which); `status` tells up, down, crashed and foreign apart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from fraudmon.core.config import Settings, project_dir
from fraudmon.core.errors import StackError

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("kafka-pom.xml")
SERVICES = ("kafka", "redis", "prometheus")
PROGRAMS = {"kafka": "java", "redis": "redis-server", "prometheus": "prometheus"}  # what each pid file names
State = Literal["up", "starting", "down", "crashed", "foreign"]


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `status` sees it, from its pid file, the process and the port (no protocol round trip).

    `up`: our process runs and its port accepts connections; `starting`: our process runs, its port does not
    accept yet; `down`: no pid file, nothing on the port; `crashed`: a pid file whose process is gone (stopped
    without `stack down`, look at `log`); `foreign`: no process of ours, but something else listens on the port.
    """

    name: str
    address: str
    state: State
    pid: int | None  # the running process (up, starting), or the one that is gone (crashed)
    log: Path
    running: bool  # something accepts connections on the service's port: ours (up) or another program's


def _port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def _runs_program(pid: int, program: str) -> bool:
    """Whether live process `pid` runs `program` (so a recycled pid is not taken for our service); True where
    /proc cannot tell."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
    except OSError:
        return True
    return not argv or Path(argv[0]).name == program  # redis-server rewrites its title: "redis-server host:port"


class LocalStack:
    """Install, start, stop and inspect the local services for one `Settings` (ports, data dir)."""

    def __init__(self, settings: Settings, worker_metrics_ports: tuple[int, ...] | None = None) -> None:
        self.settings = settings
        self.stack = settings.stack
        self.data_dir = settings.resolve(self.stack.data_dir)
        self.cache_dir = settings.resolve(self.stack.cache_dir)
        self.jars_dir = self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
        self.worker_metrics_ports = worker_metrics_ports or (settings.worker.metrics_port,)

    # ---- install -------------------------------------------------------------------------------------------
    def install(self) -> None:
        """Fetch the Kafka broker jars once (Maven), and check that Java, Redis and Prometheus are present."""
        self._require_tools()
        marker = self.jars_dir / ".complete"
        if marker.exists():
            return
        self.jars_dir.mkdir(parents=True, exist_ok=True)
        print(f"stack: fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {self.jars_dir}")
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.jars_dir}", "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(
                f"Maven could not fetch the Kafka jars (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-2000:]}"
            )
        marker.touch()

    @staticmethod
    def _require_tools() -> None:
        missing = {
            "java": "Java 17 (apt-get install openjdk-17-jre-headless)",
            "mvn": "Maven (apt-get install maven)",
            "redis-server": "Redis (apt-get install redis-server)",
            "prometheus": "Prometheus (apt-get install prometheus)",
        }
        absent = [hint for tool, hint in missing.items() if shutil.which(tool) is None]
        if absent:
            raise StackError("missing tools, install them first (or run scripts/setup.sh): " + "; ".join(absent))

    # ---- paths ---------------------------------------------------------------------------------------------
    def _dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _pidfile(self, service: str) -> Path:
        return self._dir(service) / "pid"

    def log_path(self, service: str) -> Path:
        return self._dir(service) / f"{service}.log"

    def port(self, service: str) -> int:
        return {
            "kafka": self.stack.kafka_port,
            "redis": self.stack.redis_port,
            "prometheus": self.stack.prometheus_port,
        }[service]

    def address(self, service: str) -> str:
        scheme = {"kafka": "", "redis": "redis://", "prometheus": "http://"}[service]
        return f"{scheme}127.0.0.1:{self.port(service)}"

    def ui_url(self, page: str) -> str:
        """The address of a page of the running Prometheus's UI (`alerts`, `graph`, `targets`): the classic UI
        where the new one is not installed (Debian's Prometheus 2.x answers 404 on `/alerts`)."""
        base = self.address("prometheus")
        try:
            with urllib.request.urlopen(f"{base}/{page}", timeout=2):
                return f"{base}/{page}"
        except OSError:
            return f"{base}/classic/{page}"

    def _pid_in_file(self, service: str) -> int | None:
        try:
            return int(self._pidfile(service).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _read_pid(self, service: str) -> int | None:
        """The pid of our running process for `service`, or None."""
        pid = self._pid_in_file(service)
        return pid if pid is not None and _pid_alive(pid) and _runs_program(pid, PROGRAMS[service]) else None

    # ---- up ------------------------------------------------------------------------------------------------
    def up(self, services: tuple[str, ...] = SERVICES, timeout_s: float = 90.0) -> None:
        """Start each service unless it already answers, wait until it does, then create the topics."""
        self.install()
        for service in services:
            if self._read_pid(service) is None and _port_open(self.port(service)):
                print(f"stack: {service} already answers on {self.address(service)} (not started by us)")
                continue
            if self._read_pid(service) is None:
                getattr(self, f"_start_{service}")()
        for service in services:
            self._wait_ready(service, timeout_s)
        if "kafka" in services:
            self.create_topics()

    def _spawn(self, service: str, argv: list[str], cwd: Path) -> None:
        log = self.log_path(service).open("ab")
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._pidfile(service).write_text(str(proc.pid))

    def _start_kafka(self) -> None:
        home = self._dir("kafka")
        data = home / "data"
        props = home / "server.properties"
        props.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.stack.kafka_controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.stack.kafka_port},"
                f"CONTROLLER://127.0.0.1:{self.stack.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.stack.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                f"num.partitions={self.settings.topics.partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=24",
                "",
            ])
        )
        (home / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
        )
        classpath = f"{self.jars_dir}/*"
        java = ["java", f"-Xmx{self.stack.kafka_heap}", "-Xms128m", "-XX:+UseG1GC",
                f"-Dlog4j.configuration=file:{home / 'log4j.properties'}", "-cp", classpath]
        if not (data / "meta.properties").exists():
            result = subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "-t", uuid.uuid4().hex[:22], "-c", str(props)],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise StackError(f"kafka storage format failed: {result.stdout}{result.stderr}")
        self._spawn("kafka", [*java, "kafka.Kafka", str(props)], home)

    def _start_redis(self) -> None:
        """Redis with an append-only file, fsynced as `stack.redis_appendfsync` says (every second by default):
        rule state (velocity windows, account histories, seen transaction ids) survives a restart."""
        home = self._dir("redis")
        self._spawn(
            "redis",
            ["redis-server", "--port", str(self.stack.redis_port), "--bind", "127.0.0.1", "--dir", str(home),
             "--save", "", "--appendonly", "yes", "--appendfsync", self.stack.redis_appendfsync, "--daemonize", "no",
             "--maxmemory-policy", "volatile-lru"],
            home,
        )

    def prometheus_config(self) -> Path:
        """The local Prometheus config: monitoring/prometheus.yml (its rules and scrape settings) with this
        stack's worker metrics ports as the targets."""
        home = self._dir("prometheus")
        monitoring = project_dir() / "monitoring"
        config = yaml.safe_load((monitoring / "prometheus.yml").read_text())
        config["rule_files"] = [str(monitoring / pattern) for pattern in config["rule_files"]]
        targets = home / "targets.json"
        targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}" for port in self.worker_metrics_ports]}]))
        for job in config["scrape_configs"]:
            if job["job_name"] == "fraud-worker":
                job["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "5s"}]
        path = home / "prometheus.yml"
        path.write_text("# Written by `fraudmon stack up` from monitoring/prometheus.yml; edit that file instead.\n"
                        + yaml.safe_dump(config, sort_keys=False))
        return path

    def _start_prometheus(self) -> None:
        home = self._dir("prometheus")
        self._spawn(
            "prometheus",
            ["prometheus", f"--config.file={self.prometheus_config()}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.stack.prometheus_port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=2d"],
            home,
        )

    def _ready(self, service: str) -> bool:
        if service == "kafka":
            return _port_open(self.stack.kafka_port) and self._kafka_answers()
        if service == "redis":
            return self._redis_answers()
        try:
            url = f"http://127.0.0.1:{self.stack.prometheus_port}/-/ready"
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _kafka_answers(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=f"127.0.0.1:{self.stack.kafka_port}", request_timeout_ms=3000
            )
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def _redis_answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.stack.redis_port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def _wait_ready(self, service: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready(service):
                return
            pid = self._pidfile(service).exists() and self._read_pid(service)
            if self._pidfile(service).exists() and not pid and not _port_open(self.port(service)):
                break
            time.sleep(0.3)
        log = self.log_path(service)
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
        raise StackError(
            f"{service} did not answer on {self.address(service)} within {timeout_s:.0f}s; "
            f"its log is {log}:\n{tail}"
        )

    def create_topics(self) -> list[str]:
        """Create the SPEC topics with the configured partitions, and the lists topics (compacted, and its audit
        trail); existing ones are left as they are."""
        from stream_app.lists import ensure_lists_topics

        bootstrap = f"127.0.0.1:{self.stack.kafka_port}"
        return create_topics(
            bootstrap, self.settings.topics.all(), self.settings.topics.partitions,
            self.settings.topics.replication_factor,
        ) + ensure_lists_topics(bootstrap, self.settings.topics)

    # ---- down / status -------------------------------------------------------------------------------------
    def down(self, timeout_s: float = 30.0, services: tuple[str, ...] = SERVICES, kill: bool = False) -> list[str]:
        """Stop the services this stack started (by their pid files) and return their names; `kill` sends
        SIGKILL at once, as a crash would."""
        stopped = []
        for service in reversed(services):
            pid = self._read_pid(service)
            if pid is None:
                self._pidfile(service).unlink(missing_ok=True)
                continue
            os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
            self._pidfile(service).unlink(missing_ok=True)
            stopped.append(service)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Each service's state from its pid file, its process and a TCP connect to its port (well under a
        second in all: no client handshakes, which wait for timeouts when a service is gone)."""
        return [self._status(service) for service in SERVICES]

    def _status(self, service: str) -> ServiceStatus:
        recorded = self._pid_in_file(service)
        pid = self._read_pid(service)
        listening = _port_open(self.port(service), timeout_s=0.2)
        state: State
        if pid is not None:
            state = "up" if listening else "starting"
        elif recorded is not None:
            state, pid = "crashed", recorded
        else:
            state = "foreign" if listening else "down"
        return ServiceStatus(service, self.address(service), state, pid, self.log_path(service), listening)


def create_topics(bootstrap: str, names: list[str], partitions: int, replication_factor: int = 1) -> list[str]:
    """Create the missing topics; return the names that were created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor) for name in missing])
            except TopicAlreadyExistsError:
                pass
        return missing
    finally:
        admin.close()


def free_port() -> int:
    """A port the OS says is free now (tests and throwaway stacks; never a fixed one in the ephemeral range)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_settings(base: Settings, data_dir: Path, worker_metrics_port: int | None = None) -> Settings:
    """`base` with a stack of its own: data in `data_dir`, every port free, clients pointed at it."""
    stack = base.stack.model_copy(update={
        "data_dir": str(data_dir), "kafka_port": free_port(), "kafka_controller_port": free_port(),
        "redis_port": free_port(), "prometheus_port": free_port(),
    })
    worker = base.worker.model_copy(update={"metrics_port": worker_metrics_port or free_port()})
    return base.model_copy(update={
        "stack": stack, "worker": worker,
        "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{stack.kafka_port}"}),
        "redis": base.redis.model_copy(update={"url": f"redis://127.0.0.1:{stack.redis_port}/0"}),
    })
