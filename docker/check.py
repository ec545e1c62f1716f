#!/usr/bin/env python3
"""Checks the docker deployment against the `candor` binary, without Docker.

    python3 docker/check.py

Reads docker/compose.yaml, docker/prometheus.yml and docker/Dockerfile, and
the binary's settings from src/main.rs and src/ingest_args.rs. Exits 1 on a
problem. Needs only Python 3 and PyYAML (pip install pyyaml).

What it checks:
  - compose.yaml and prometheus.yml parse;
  - every ${VAR} in compose.yaml has a default or is documented in a
    comment of compose.yaml;
  - every depends_on names a service, with a valid condition; a
    service_healthy target has a healthcheck, a
    service_completed_successfully target does not restart;
  - every CANDOR_* name in compose.yaml appears literally ("NAME") in
    src/main.rs or src/ingest_args.rs;
  - each Candor service runs a real subcommand, from the one shared build,
    and every CANDOR_* variable set for it alone is one that subcommand
    reads (shared ones it ignores are only noted);
  - the master secret is a mounted compose secret;
  - an ingest node on a non-loopback address has TLS or CANDOR_PLAIN_HTTP;
  - secrets and named volumes are declared; published host ports differ;
  - prometheus.yml scrapes every Candor service whose subcommand has a
    *_LISTEN setting, on that port, none whose subcommand has none, and
    only services that exist;
  - the Dockerfile copies every workspace member.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("docker/check.py needs PyYAML: pip install pyyaml")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPOSE = HERE / "compose.yaml"
PROMETHEUS = HERE / "prometheus.yml"
DOCKERFILE = HERE / "Dockerfile"
SOURCES = [ROOT / "src" / "main.rs", ROOT / "src" / "ingest_args.rs"]
CARGO_TOML = ROOT / "Cargo.toml"

# Read with std::env outside clap (main.rs: master_secret(), the log filter).
GLOBAL_ENV = {
    "CANDOR_MASTER_SECRET_FILE",
    "CANDOR_MASTER_SECRET",
    "CANDOR_DATA_DIR",
    "CANDOR_LOG",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

passed = 0
failed: list[str] = []
notes: list[str] = []


def check(ok: bool, what: str, problem: str = "") -> bool:
    global passed
    if ok:
        passed += 1
        print(f"ok    {what}")
    else:
        failed.append(f"{what}: {problem}" if problem else what)
        print(f"FAIL  {what}{': ' + problem if problem else ''}")
    return ok


def note(text: str) -> None:
    notes.append(text)
    print(f"note  {text}")


def strings(node):
    """Every string value (not key) of a loaded YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# --- the binary's settings, from its source -----------------------------------


def rust_settings(text: str):
    """Per struct: env names of its fields and the types it flattens; the
    Command enum's variants with the Args type of each."""
    structs: dict[str, tuple[set[str], set[str]]] = {}
    for m in re.finditer(r"\bstruct\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
        name, body = m.group(1), m.group(2)
        envs = set(re.findall(r'env\s*=\s*"(CANDOR_[A-Z0-9_]+)"', body))
        flattened = set(
            re.findall(r"#\[command\(flatten\)\]\s*(?:pub\s+)?\w+\s*:\s*(\w+)", body)
        )
        structs[name] = (envs, flattened)
    commands: dict[str, str | None] = {}
    enum = re.search(r"enum\s+Command\s*\{(.*?)\n\}", text, re.S)
    if enum:
        for variant, args in re.findall(r"^\s*(\w+)(?:\((\w+)\))?,", enum.group(1), re.M):
            kebab = re.sub(r"(?<!^)([A-Z])", r"-\1", variant).lower()
            commands[kebab] = args or None
    return structs, commands


def env_of_struct(structs, name: str, seen=None) -> set[str]:
    seen = seen or set()
    if name in seen or name not in structs:
        return set()
    seen.add(name)
    envs, flattened = structs[name]
    out = set(envs)
    for f in flattened:
        out |= env_of_struct(structs, f, seen)
    return out


def main() -> int:
    source_text = "\n".join(p.read_text() for p in SOURCES)
    compose_text = COMPOSE.read_text()

    # --- parse ---------------------------------------------------------------
    try:
        compose = yaml.safe_load(compose_text)
    except yaml.YAMLError as e:
        check(False, "compose.yaml parses", str(e))
        return report()
    check(isinstance(compose, dict) and isinstance(compose.get("services"), dict),
          "compose.yaml parses and has services")
    services: dict = compose.get("services") or {}
    try:
        prometheus = yaml.safe_load(PROMETHEUS.read_text())
        check(isinstance(prometheus, dict) and isinstance(prometheus.get("scrape_configs"), list),
              "prometheus.yml parses and has scrape_configs")
    except (OSError, yaml.YAMLError) as e:
        check(False, "prometheus.yml parses", str(e))
        prometheus = {}

    # --- ${VAR} interpolation ------------------------------------------------
    comments = "\n".join(l for l in compose_text.splitlines() if l.lstrip().startswith("#"))
    undocumented, unbraced = set(), set()
    for s in strings(compose):
        s = s.replace("$$", "")
        for name, op in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?", s):
            has_default = op in ("-", ":-")
            if not has_default and not re.search(rf"\b{name}\b", comments):
                undocumented.add(name)
        for name in re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", s):
            unbraced.add(name)
    check(not undocumented, "every ${VAR} has a default or is documented",
          ", ".join(sorted(undocumented)))
    check(not unbraced, "every interpolation is written ${VAR}",
          "unbraced (write ${X} or $$X): " + ", ".join(sorted(unbraced)))

    # --- depends_on ------------------------------------------------------------
    bad_deps = []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            cond = (spec or {}).get("condition", "service_started")
            target = services.get(dep)
            if target is None:
                bad_deps.append(f"{name} -> {dep} (no such service)")
            elif cond not in CONDITIONS:
                bad_deps.append(f"{name} -> {dep} (condition {cond!r})")
            elif cond == "service_healthy" and (
                not target.get("healthcheck") or target["healthcheck"].get("disable")
            ):
                bad_deps.append(f"{name} -> {dep} (service_healthy, but {dep} has no healthcheck)")
            elif cond == "service_completed_successfully" and str(
                target.get("restart", "no")
            ) not in ("no", "on-failure"):
                bad_deps.append(f"{name} -> {dep} (a one-shot must not restart: {target.get('restart')})")
    check(not bad_deps, "every depends_on names a service with a usable condition",
          "; ".join(bad_deps))

    # --- CANDOR_* names exist in the binary ----------------------------------
    used = set(re.findall(r"\bCANDOR_[A-Z0-9_]+\b", compose_text))
    missing = sorted(n for n in used if f'"{n}"' not in source_text)
    check(not missing, f"all {len(used)} CANDOR_* names in compose.yaml appear in "
          "src/main.rs or src/ingest_args.rs", "not in the binary: " + ", ".join(missing))

    # --- Candor services --------------------------------------------------------
    structs, commands = rust_settings(source_text)
    check(bool(commands) and "ingest" in commands,
          f"read {len(commands)} subcommands from src/main.rs")
    shared = set((compose.get("x-candor-env") or {}).keys())
    candor = {n: s for n, s in services.items()
              if isinstance(s.get("build"), dict)
              and str(s["build"].get("dockerfile", "")).endswith("Dockerfile")}
    check(len(candor) >= 4, f"{len(candor)} Candor services built from docker/Dockerfile",
          "expected ingest, processor and query services")
    builds = {repr(sorted(s["build"].items())) for s in candor.values()}
    images = {s.get("image") for s in candor.values()}
    check(len(builds) == 1 and len(images) == 1,
          "every Candor service shares one build and image", f"{builds} {images}")
    for s in candor.values():
        ctx = (COMPOSE.parent / s["build"].get("context", ".")).resolve()
        check((ctx / s["build"]["dockerfile"]).is_file(),
              "the build's dockerfile exists from its context",
              str(ctx / s["build"]["dockerfile"]))
        break

    top_secrets = compose.get("secrets") or {}
    top_volumes = compose.get("volumes") or {}
    by_role: dict[str, list[str]] = {}
    listens: dict[str, list[str]] = {}
    for name, svc in candor.items():
        cmd = svc.get("command") or []
        if isinstance(cmd, str):
            cmd = cmd.split()
        sub = cmd[0] if cmd else "--help"
        env = env_of(svc)
        if sub.startswith("-"):
            continue  # the operator's `cli`: a subcommand per `run`
        if not check(sub in commands, f"{name}: `candor {sub}` is a subcommand",
                     f"known: {', '.join(sorted(commands))}"):
            continue
        by_role.setdefault(sub, []).append(name)
        reads = env_of_struct(structs, commands[sub] or "") | GLOBAL_ENV
        # A subcommand with a *_LISTEN setting serves HTTP, /metrics included.
        listens[name] = sorted(v for v in reads if v.endswith("_LISTEN"))
        own = {k for k in env if k.startswith("CANDOR_")} - shared
        ignored = sorted(own - reads)
        check(not ignored, f"{name}: every CANDOR_* set for it is read by `candor {sub}`",
              "ignored by the binary: " + ", ".join(ignored))
        idle = sorted({k for k in shared if k.startswith("CANDOR_")} - reads)
        if idle:
            note(f"{name}: shared {', '.join(idle)} not read by `candor {sub}` (harmless)")
        # The master secret: a mounted secret, never a value in the file.
        path = env.get("CANDOR_MASTER_SECRET_FILE", "")
        mounted = [s if isinstance(s, str) else s.get("target") or s.get("source")
                   for s in svc.get("secrets") or []]
        secret = path.removeprefix("/run/secrets/")
        check("CANDOR_MASTER_SECRET" not in env and path.startswith("/run/secrets/")
              and secret in mounted and secret in top_secrets,
              f"{name}: master secret from a mounted compose secret", path or "not set")
        # Plain HTTP on a non-loopback address needs CANDOR_PLAIN_HTTP.
        if sub == "ingest":
            listen = env.get("CANDOR_INGEST_LISTEN", "127.0.0.1:8080")
            host = listen.rsplit(":", 1)[0].strip("[]")
            loopback = host.startswith("127.") or host in ("::1", "localhost")
            tls = env.get("CANDOR_TLS_CERT") and env.get("CANDOR_TLS_KEY")
            check(loopback or tls or env.get("CANDOR_PLAIN_HTTP", "").lower() == "true",
                  f"{name}: listens on {listen} with TLS or CANDOR_PLAIN_HTTP=true")

    for role in ("ingest", "processor", "query"):
        check(role in by_role, f"a `candor {role}` service exists",
              "none of the Candor services runs it")
    replicas = {n: (s.get("deploy") or {}).get("replicas", 1) for n, s in services.items()}
    check(sum(replicas[n] for n in by_role.get("ingest", [])) >= 2,
          "two or more ingest nodes", str(by_role.get("ingest")))
    check(sum(replicas[n] for n in by_role.get("processor", [])) >= 2,
          "two or more processors in one consumer group")
    groups = {env_of(services[n]).get("CANDOR_PROCESSOR_GROUP", "candor-processor")
              for n in by_role.get("processor", [])}
    check(len(groups) <= 1, "the processors share one consumer group", str(groups))

    # --- secrets, volumes, ports ----------------------------------------------
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
        if f and not (COMPOSE.parent / f).is_file():
            note(f"secret {name}: {f} does not exist yet (create it before `up`)")

    published = {}
    dup = []
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

    # --- Prometheus targets ---------------------------------------------------
    scraped: dict[str, set[str]] = {}
    for job in prometheus.get("scrape_configs") or []:
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                host, _, port = str(t).rpartition(":")
                scraped.setdefault(host, set()).add(port)
        # A replicated service is found through DNS: every replica's address.
        for sd in job.get("dns_sd_configs") or []:
            for host in sd.get("names") or []:
                scraped.setdefault(str(host), set()).add(str(sd.get("port", "")))
    unknown = sorted(h for h in scraped if h not in services and h != "localhost")
    check(not unknown, "prometheus.yml scrapes only compose services", ", ".join(unknown))
    for name, variables in listens.items():
        env = env_of(services[name])
        if not variables:
            if name in scraped:
                check(False, f"prometheus.yml does not scrape {name}",
                      "its subcommand has no listen address, so no /metrics")
            else:
                note(f"{name}: its subcommand serves no HTTP, so no /metrics; not scraped")
        for var in variables:
            listen = env.get(var, "")
            port = listen.rsplit(":", 1)[-1]
            check(bool(listen) and port in scraped.get(name, set()),
                  f"prometheus.yml scrapes {name} on its {var} port {port or '?'}",
                  f"{var}={listen or '(unset: loopback default)'}, scraped on "
                  f"{sorted(scraped.get(name, set())) or 'nothing'}")

    # --- Dockerfile copies every workspace member --------------------------------
    members = re.search(r"members\s*=\s*\[(.*?)\]", CARGO_TOML.read_text(), re.S)
    members = re.findall(r'"([^"]+)"', members.group(1)) if members else []
    dockerfile = DOCKERFILE.read_text()
    copies = set(re.findall(r"^COPY\s+(?!--from)(\S+)\s", dockerfile, re.M))
    missing = [m for m in ["src", *members] if m not in copies]
    check(bool(members) and not missing, f"the Dockerfile copies src/ and all {len(members)} "
          "workspace members", "missing COPY for " + ", ".join(missing))

    return report()


def report() -> int:
    print()
    for f in failed:
        print(f"problem: {f}")
    print(f"checks: {passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
