#!/usr/bin/env python3
"""Checks the docker deployment against the `candor` binary, without Docker.

    python3 docker/check.py [--compose FILE]

The binary is the authority on settings: for every Candor service of
docker/compose.yaml this runs `candor config print --role <role>` with that
service's environment and reads the TOML it prints, instead of guessing
from the Rust source. The binary is $CANDOR_BIN, else
$CARGO_TARGET_DIR/debug/candor, else target/debug/candor; without one the
script says how to build it and exits 2. Exits 1 on a problem, 0 when all
is well. Needs Python 3.11 (tomllib) and PyYAML (pip install pyyaml).

How a service's environment is taken: YAML anchors and merge keys (`<<:`)
resolved, every `${VAR:-default}` (and `${VAR-default}`) replaced by its
default, the shell's own values ignored, so the check means the same on
every machine. The binary runs with exactly that environment plus PATH,
and CANDOR_LOG=warn (a quiet log filter must not hide a warning).
master_secret_file is only a path to it: printing never reads the secret.

What it checks:
  - compose.yaml and prometheus.yml parse; every ${VAR} has a default and
    is listed in the header comment of compose.yaml;
  - every depends_on names a service with a usable condition;
  - every Candor service (built from docker/Dockerfile) runs a command the
    binary knows (`candor <command> --help` succeeds), all from one build;
  - `candor config print` with its environment succeeds and warns about
    nothing: no old variable name, no CANDOR_* variable that is not a
    setting, no unknown key or wrong type (those fail the print);
  - from the printed configuration: lake.url and control.url are s3:// on
    every service; the buckets they name are made by minio-init, without
    object versioning; kafka.topic, kafka.partitions and
    kafka.replication_factor are the ones the kafka-topic one-shot creates
    the topic with (its replication factor a compose variable); every
    listener is on 0.0.0.0, and ingest and query serve plain HTTP only with
    tls.plain_http = true (or TLS with tls.cert and tls.key); each
    healthcheck probes its node's port; the master secret is a mounted
    compose secret;
  - two or more ingest nodes, two or more processors in one consumer group;
  - no Candor service mounts a volume (the lake and the control plane are on
    S3, so any node could be on another machine) and no volume is a lake;
  - secrets and named volumes are declared; published host ports differ;
  - prometheus.yml scrapes every node with a listener on that port, and
    only services that exist;
  - the Dockerfile copies src/ and every workspace member of Cargo.toml.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("docker/check.py needs PyYAML: pip install pyyaml")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMETHEUS = HERE / "prometheus.yml"
DOCKERFILE = HERE / "Dockerfile"
CARGO_TOML = ROOT / "Cargo.toml"

# The node commands and the role whose configuration they load; any other
# command (the `cli` service's --help, tenant, kpi, ...) is the operator's.
NODE_ROLES = {"standalone", "ingest", "processor", "query"}
# The flags a node takes, as the setting each one sets (`--set` passes on).
NODE_FLAGS = {
    "standalone": {"--data-dir": "data_dir", "--listen": "ingest.listen",
                   "--query-listen": "query.listen"},
    "ingest": {"--listen": "ingest.listen"},
    "processor": {"--lake": "lake.url", "--listen": "processor.listen"},
    "query": {"--lake": "lake.url", "--listen": "query.listen"},
}
NODE_SWITCHES = {"--drain"}
# The listeners of each role, and whether they are an API (ingest, query)
# that needs TLS or tls.plain_http off loopback.
LISTENERS = {
    "standalone": [("ingest", True), ("query", True)],
    "ingest": [("ingest", True)],
    "processor": [("processor", False)],
    "query": [("query", True)],
    "operator": [],
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_PREFIX = re.compile(r"^\S+Z\s+(?=[A-Z]+\s)")  # a log line's timestamp

passed = 0
failed: list[str] = []


def check(ok: bool, what: str, problem: str = "") -> bool:
    """Records and prints one check."""
    global passed
    if ok:
        passed += 1
        print(f"ok    {what}")
    else:
        failed.append(f"{what}: {problem}" if problem else what)
        print(f"FAIL  {what}{': ' + problem if problem else ''}")
    return ok


def note(text: str) -> None:
    print(f"note  {text}")


# --- compose: interpolation, environments, commands ---------------------------


class Interpolation:
    """Compose's ${...} replaced by the defaults written in the file."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.without_default: set[str] = set()
        self.unbraced: set[str] = set()

    def text(self, s: str) -> str:
        def one(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            if m.group("bare"):
                self.unbraced.add(m.group("bare"))
                return ""
            name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
            self.names.add(name)
            if op in ("-", ":-"):
                return arg
            self.without_default.add(name)
            return ""

        return INTERPOLATION.sub(one, s)

    def document(self, node):
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, dict):
            return {k: self.document(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.document(v) for v in node]
        return node


def environment(service: dict) -> dict[str, str]:
    """A service's environment as the container gets it (a variable without
    a value is taken from the shell, so it is left out here)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(str(item).partition("=")[::2] for item in env)
    out = {}
    for key, value in env.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[str(key)] = str(value)
    return out


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flag_value(args: list[str], flag: str) -> str | None:
    """The value after `flag` (or of `flag=value`) in an argument list."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# --- the binary -----------------------------------------------------------------


def find_binary() -> Path | None:
    candidates = []
    if os.environ.get("CANDOR_BIN"):
        candidates.append(Path(os.environ["CANDOR_BIN"]))
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "candor")
    candidates.append(ROOT / "target" / "debug" / "candor")
    return next((c for c in candidates if c.is_file()), None)


def run(binary: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs the binary; retries a moment if it is being rebuilt meanwhile."""
    for attempt in range(5):
        try:
            return subprocess.run([str(binary), *args], env=env, capture_output=True,
                                  text=True, timeout=60, cwd=ROOT)
        except OSError:  # missing or busy while cargo replaces it
            if attempt == 4:
                raise
            time.sleep(3)
    raise AssertionError("unreachable")


def print_config(binary: Path, name: str, role: str, args: list[str],
                 env: dict[str, str]) -> dict | None:
    """`candor config print` for one service: its settings as a dict, or
    None when the binary refuses them (a warning is a failure too, but the
    printed settings are still checked)."""
    flags = []
    if role in NODE_FLAGS:
        known = NODE_FLAGS[role]
        rest = list(args[1:])
        while rest:
            a = rest.pop(0)
            key, _, inline = a.partition("=")
            if key in NODE_SWITCHES:
                continue
            value = inline or (rest.pop(0) if rest else "")
            if key in known:
                flags += ["--set", f"{known[key]}={value}"]
            elif key in ("--set", "--config"):
                flags += [key, value]
            else:
                check(False, f"{name}: flags of `candor {role}`",
                      f"check.py does not know {key}; prefer a CANDOR_* setting")
                return None
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, "CANDOR_LOG": "warn"}
    done = run(binary, ["config", "print", "--role", role, *flags], run_env)
    lines = [LOG_PREFIX.sub("", ANSI.sub("", l).strip())
             for l in done.stderr.splitlines() if l.strip()]
    if done.returncode != 0:
        check(False, f"{name}: `candor config print --role {role}` accepts its environment",
              f"exit status {done.returncode}: {' | '.join(lines) or '(no message)'}")
        return None
    check(not lines, f"{name}: its environment gives no warning (role {role})",
          "the binary warned:\n      " + "\n      ".join(lines))
    try:
        return tomllib.loads(done.stdout)
    except tomllib.TOMLDecodeError as e:
        check(False, f"{name}: `candor config print` prints TOML", str(e))
        return None


def host_port(addr: str) -> tuple[str, str]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), port


# --- the checks -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", type=Path, default=HERE / "compose.yaml",
                        help="the compose file to check (default: docker/compose.yaml)")
    compose_path = parser.parse_args().compose.resolve()

    binary = find_binary()
    if binary is None:
        print("docker/check.py asks the candor binary for its settings, and found none "
              "($CANDOR_BIN, $CARGO_TARGET_DIR/debug/candor, target/debug/candor).\n"
              "Build it first: cargo build --bin candor", file=sys.stderr)
        return 2
    print(f"binary: {binary}")
    print(f"compose file: {compose_path}")

    # --- parse -------------------------------------------------------------------
    compose_text = compose_path.read_text()
    try:
        raw = yaml.safe_load(compose_text)  # anchors and `<<:` merges resolved
    except yaml.YAMLError as e:
        check(False, "compose file parses", str(e))
        return report()
    if not check(isinstance(raw, dict) and isinstance(raw.get("services"), dict),
                 "compose file parses and has services"):
        return report()
    interpolation = Interpolation()
    compose = interpolation.document(raw)
    services: dict = compose["services"]
    try:
        prometheus = yaml.safe_load(PROMETHEUS.read_text())
        check(isinstance(prometheus, dict) and isinstance(prometheus.get("scrape_configs"), list),
              "prometheus.yml parses and has scrape_configs")
    except (OSError, yaml.YAMLError) as e:
        check(False, "prometheus.yml parses", str(e))
        prometheus = {}

    # --- ${VAR} ------------------------------------------------------------------
    header = []
    for line in compose_text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    header_text = "\n".join(header)
    check(not interpolation.without_default, "every ${VAR} has a default",
          "no default: " + ", ".join(sorted(interpolation.without_default)))
    check(not interpolation.unbraced, "every interpolation is written ${VAR}",
          "unbraced (write ${X}, or $$X for a literal $): "
          + ", ".join(sorted(interpolation.unbraced)))
    undocumented = sorted(n for n in interpolation.names
                          if not re.search(rf"^#\s+{n}\b", header_text, re.M))
    check(not undocumented,
          f"all {len(interpolation.names)} variables are listed in the header comment",
          "not listed: " + ", ".join(undocumented))

    # --- depends_on ----------------------------------------------------------------
    bad = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {} for d in deps}
        for dep, spec in deps.items():
            cond = (spec or {}).get("condition", "service_started")
            target = services.get(dep)
            if target is None:
                bad.append(f"{name} -> {dep} (no such service)")
            elif cond not in CONDITIONS:
                bad.append(f"{name} -> {dep} (condition {cond!r})")
            elif cond == "service_healthy" and not (target.get("healthcheck") or {}).get("test"):
                bad.append(f"{name} -> {dep} (service_healthy, but it has no healthcheck)")
            elif cond == "service_completed_successfully" and \
                    str(target.get("restart", "no")) not in ("no", "on-failure"):
                bad.append(f"{name} -> {dep} (a one-shot must not restart)")
    check(not bad, "every depends_on names a service with a usable condition", "; ".join(bad))

    # --- Candor services: what the binary makes of them ------------------------
    candor = {n: s for n, s in services.items()
              if str((s.get("build") or {}).get("dockerfile", "")).endswith("docker/Dockerfile")}
    check(len(candor) >= 4, f"{len(candor)} Candor services built from docker/Dockerfile",
          "expected ingest, processor, query and cli")
    builds = {repr(sorted(s["build"].items())) for s in candor.values()}
    images = {s.get("image") for s in candor.values()}
    check(len(builds) == 1 and len(images) == 1,
          "every Candor service shares one build and image", f"{builds} {images}")
    for s in list(candor.values())[:1]:
        ctx = (compose_path.parent / s["build"].get("context", ".")).resolve()
        check((ctx / s["build"]["dockerfile"]).is_file(),
              "the build's dockerfile exists in its context", str(ctx / s["build"]["dockerfile"]))

    topic_args = command(services.get("kafka-topic") or {})
    raw_topic_args = command((raw["services"].get("kafka-topic")) or {})
    topic = {f: flag_value(topic_args, f) for f in
             ("--topic", "--partitions", "--replication-factor")}
    check(all(topic.values()), "kafka-topic creates a topic with partitions and replicas",
          f"its command: {topic_args}")
    check("${" in (flag_value(raw_topic_args, "--replication-factor") or ""),
          "kafka-topic's replication factor is a compose variable",
          f"--replication-factor {flag_value(raw_topic_args, '--replication-factor')}")
    init = " ".join(command(services.get("minio-init") or {}))
    check("version" not in init, "minio-init turns on no object versioning", init)

    top_secrets = compose.get("secrets") or {}
    roles: dict[str, list[str]] = {}
    configs: dict[str, tuple[str, dict]] = {}
    for name, svc in candor.items():
        args = command(svc)
        sub = args[0] if args else "--help"
        role = sub if sub in NODE_ROLES else "operator"
        roles.setdefault(role, []).append(name)
        probe = [a for a in args if not a.startswith("-")][:2] if role == "operator" else [sub]
        done = run(binary, [*probe, "--help"], {"PATH": os.environ.get("PATH", "")})
        said = [l for l in ANSI.sub("", done.stderr).splitlines() if l.strip()]
        check(done.returncode == 0,
              f"{name}: `candor {' '.join([*probe, '--help'])}` answers",
              f"exit status {done.returncode}: {' | '.join(said[:3]) or '(no message)'}")
        env = environment(svc)
        config = print_config(binary, name, role, args, env)
        if config is None:
            continue
        configs[name] = (role, config)

        for key in ("lake", "control"):
            url = str((config.get(key) or {}).get("url", ""))
            check(url.startswith("s3://"), f"{name}: {key}.url is on S3 ({url})",
                  "every node reads the same store over S3; set "
                  f"CANDOR_{key.upper()}__URL=s3://bucket/prefix")
            bucket = url.removeprefix("s3://").split("/", 1)[0]
            if bucket:
                check(re.search(rf"minio/{re.escape(bucket)}(\s|$)", init) is not None,
                      f"{name}: minio-init makes the bucket {bucket} of {key}.url",
                      f"minio-init runs: {init}")
        if role in ("ingest", "processor", "standalone"):
            kafka = config.get("kafka") or {}
            for key, arg in (("topic", "--topic"), ("partitions", "--partitions"),
                             ("replication_factor", "--replication-factor")):
                check(str(kafka.get(key)) == str(topic[arg]),
                      f"{name}: kafka.{key} = {kafka.get(key)} as kafka-topic's {arg}",
                      f"kafka-topic creates it with {arg} {topic[arg]}")
        tls = config.get("tls") or {}
        has_tls = bool(tls.get("cert") and tls.get("key"))
        for section, api in LISTENERS[role]:
            listen = (config.get(section) or {}).get("listen")
            if not check(bool(listen), f"{name}: {section}.listen is set",
                         "unset: the node serves no /metrics or /healthz"):
                continue
            host, port = host_port(str(listen))
            check(host == "0.0.0.0", f"{name}: {section}.listen = {listen} is on 0.0.0.0",
                  "other containers (Prometheus, the healthcheck's peers) reach it only there")
            if api:
                check(has_tls or tls.get("plain_http") is True,
                      f"{name}: {section}.listen serves plain HTTP with tls.plain_http = true",
                      f"tls.plain_http = {tls.get('plain_http')} and no tls.cert/tls.key")
            test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or []))
            check(f"/dev/tcp/127.0.0.1/{port} " in test,
                  f"{name}: the healthcheck probes its {section}.listen port {port}",
                  f"healthcheck: {test or 'none'}")
        # The master secret: a mounted secret, never a value in the file.
        path = str(config.get("master_secret_file") or "")
        secret = path.removeprefix("/run/secrets/")
        mounted = [s if isinstance(s, str) else s.get("target") or s.get("source")
                   for s in svc.get("secrets") or []]
        check("CANDOR_MASTER_SECRET" not in env and path.startswith("/run/secrets/")
              and secret in mounted and secret in top_secrets,
              f"{name}: master secret from a mounted compose secret ({path or 'unset'})")

    for role in ("ingest", "processor", "query", "operator"):
        check(role in roles, f"a `candor {role}` service exists" if role != "operator"
              else "an operator's cli service exists", f"roles found: {sorted(roles)}")
    replicas = {n: int((s.get("deploy") or {}).get("replicas", 1)) for n, s in services.items()}
    check(sum(replicas[n] for n in roles.get("ingest", [])) >= 2,
          "two or more ingest nodes", str(roles.get("ingest")))
    check(sum(replicas[n] for n in roles.get("processor", [])) >= 2,
          "two or more processors", str(roles.get("processor")))
    groups = {configs[n][1]["processor"]["group"] for n in roles.get("processor", [])
              if n in configs}
    check(len(groups) <= 1, f"the processors share one consumer group {sorted(groups)}")

    # --- volumes, secrets, ports ------------------------------------------------
    top_volumes = compose.get("volumes") or {}
    mounts = {n: [v if isinstance(v, str) else f"{v.get('source', '')}:{v.get('target', '')}"
                  for v in s.get("volumes") or []] for n, s in candor.items()}
    check(not any(mounts.values()), "no Candor service mounts a volume (lake and control on S3)",
          "; ".join(f"{n}: {', '.join(m)}" for n, m in mounts.items() if m))
    lakes = [v for v in top_volumes if "lake" in str(v)]
    check(not lakes, "no volume holds a lake", ", ".join(lakes))
    problems = []
    for name, svc in services.items():
        for s in svc.get("secrets") or []:
            src = s if isinstance(s, str) else s.get("source")
            if src not in top_secrets:
                problems.append(f"{name}: secret {src} is not declared")
        for v in svc.get("volumes") or []:
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if src and not src.startswith((".", "/", "~")) and src not in top_volumes:
                problems.append(f"{name}: volume {src} is not declared")
    check(not problems, "secrets and named volumes are declared", "; ".join(problems))
    for name, spec in top_secrets.items():
        f = spec.get("file") if isinstance(spec, dict) else None
        if f and not (compose_path.parent / f).is_file():
            note(f"secret {name}: {f} does not exist yet (create it before `up`)")

    published, dup = {}, []
    for name, svc in services.items():
        for p in svc.get("ports") or []:
            parts = str(p).split(":")
            if len(parts) >= 2:
                key = ":".join(parts[:-1])
                if key in published:
                    dup.append(f"{key} ({published[key]}, {name})")
                published[key] = name
                if replicas.get(name, 1) > 1:
                    dup.append(f"{name} publishes {key} but runs {replicas[name]} replicas")
    check(not dup, f"published host ports differ ({len(published)})", "; ".join(dup))

    # --- Prometheus targets --------------------------------------------------------
    scraped: dict[str, set[str]] = {}
    for job in prometheus.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                host, port = host_port(str(t))
                scraped.setdefault(host, set()).add(port)
        for sd in job.get("dns_sd_configs") or []:  # every replica of a service
            for host in sd.get("names") or []:
                scraped.setdefault(str(host), set()).add(str(sd.get("port", "")))
    unknown = sorted(h for h in scraped if h not in services and h != "localhost")
    check(not unknown, "prometheus.yml scrapes only compose services", ", ".join(unknown))
    for name, (role, config) in configs.items():
        for section, _ in LISTENERS[role]:
            listen = (config.get(section) or {}).get("listen")
            if listen:
                port = host_port(str(listen))[1]
                check(port in scraped.get(name, set()),
                      f"prometheus.yml scrapes {name} on its {section}.listen port {port}",
                      f"scraped on {sorted(scraped.get(name, set())) or 'nothing'}")
        if not LISTENERS[role] and name in scraped:
            check(False, f"prometheus.yml does not scrape {name}", "it serves no /metrics")

    # --- the Dockerfile copies every workspace member -----------------------------
    members = tomllib.loads(CARGO_TOML.read_text()).get("workspace", {}).get("members", [])
    copies = set(re.findall(r"^COPY\s+(?!--from)(\S+)\s", DOCKERFILE.read_text(), re.M))
    missing = [m for m in ["src", *members] if m not in copies]
    check(bool(members) and not missing,
          f"the Dockerfile copies src/ and all {len(members)} workspace members",
          "missing COPY for " + ", ".join(missing))

    return report()


def report() -> int:
    print()
    for f in failed:
        print(f"problem: {f}")
    print(f"checks: {passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
