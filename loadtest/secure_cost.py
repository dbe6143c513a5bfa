"""What TLS and API tokens cost: one gateway configuration after another in one run, the
same light model and the same perf_analyzer points (gRPC and HTTP JSON at concurrency 64).

    plain        no TLS, no tokens (the baseline)
    tls          --tls-cert-file/--tls-key-file (server certificate only)
    mtls         plus --tls-client-ca-file (perf_analyzer presents a client certificate)
    tokens       --auth-tokens-file (every request carries `authorization: Bearer ...`)
    tls+tokens   both

The certificates are made with openssl as the README shows. perf_analyzer keeps its
connections open, so the figures are the cost per request on established connections
(encryption and the token check), not the handshakes'. perf_analyzer sends no gRPC metadata
(its -H is HTTP only), so gRPC is also driven by a Python closed loop (grpc.aio, 64 calls
in flight on one channel, `py-grpc` in the table) that carries the token; that client
costs more CPU than perf_analyzer, on the same two cores, so compare its rows only with
each other.

    python -m loadtest.secure_cost [--quick] [--repeat 3] [--markdown]

With --repeat N the configurations take turns N times (plain, tls, ..., plain, tls, ...),
so that a machine whose load changes during the run weighs on each alike; the table shows
medians.

JSON goes to loadtest/results/secure_cost-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np

from loadtest import bench, clients, perf, report
from loadtest.procs import ServerError, ServerProcess, running

TOKEN = secrets.token_hex(32)
CONFIGS = ("plain", "tls", "mtls", "tokens", "tls+tokens")


def make_certificates(folder: Path) -> None:
    """ca.crt, server.crt/key (127.0.0.1) and client.crt/key in `folder`, as the README does."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca.key",
            "-out", "ca.crt")  # fmt: skip
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(extensions)
        openssl("req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out",
                f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")  # fmt: skip


def gateway_flags(config: str, folder: Path) -> list[str]:
    flags = []
    if "tls" in config:
        flags += ["--tls-cert-file", str(folder / "server.crt")]
        flags += ["--tls-key-file", str(folder / "server.key")]
    if config == "mtls":
        flags += ["--tls-client-ca-file", str(folder / "ca.crt")]
    if "tokens" in config:
        flags += ["--auth-tokens-file", str(folder / "tokens")]
    return flags


def loadgen_flags(config: str, protocol: str, folder: Path) -> list[str]:
    """perf_analyzer's TLS options and token header for `config`."""
    flags = []
    if "tls" in config and protocol == "grpc":
        flags += ["--ssl-grpc-use-ssl"]
        flags += [f"--ssl-grpc-root-certifications-file={folder}/ca.crt"]
        if config == "mtls":
            flags += [f"--ssl-grpc-private-key-file={folder}/client.key"]
            flags += [f"--ssl-grpc-certificate-chain-file={folder}/client.crt"]
    elif "tls" in config:
        flags += ["--ssl-https-verify-peer=1", "--ssl-https-verify-host=2"]
        flags += [f"--ssl-https-ca-certificates-file={folder}/ca.crt"]
        if config == "mtls":
            flags += [f"--ssl-https-client-certificate-file={folder}/client.crt"]
            flags += ["--ssl-https-client-certificate-type=PEM"]
            flags += [f"--ssl-https-private-key-file={folder}/client.key"]
            flags += ["--ssl-https-private-key-type=PEM"]
    if "tokens" in config:
        flags += ["-H", f"authorization:Bearer {TOKEN}"]
    return flags


def wait_ready(server: ServerProcess, config: str, folder: Path) -> dict[str, str]:
    """The gateway's host:port per protocol, once its model is ready."""
    found = server.wait_for_line(bench.GATEWAY_LINE, bench.READY_TIMEOUT)
    urls = {"http": found.group(1), "grpc": found.group(2)}
    scheme = "https" if "tls" in config else "http"
    context = ssl.create_default_context(cafile=folder / "ca.crt")
    if config == "mtls":
        context.load_cert_chain(folder / "client.crt", folder / "client.key")
    deadline = time.monotonic() + bench.READY_TIMEOUT
    url = f"{scheme}://{urls['http']}/v2/models/light/ready"
    headers = {"authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, verify=context, timeout=2).status_code == 200:
                return urls
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise ServerError(f"{config}: the light model was not ready in time")


def measure_config(
    config: str,
    stores: dict[str, Path],
    analyzer: perf.PerfAnalyzer,
    profile: bench.Profile,
    workdir: Path,
) -> list[report.PointResult]:
    plan = bench.ServerPlan("light", "gateway", "on", ())
    argv = [*bench.server_argv(plan, stores), *gateway_flags(config, workdir)]
    protocols = ("http",) if "tokens" in config else ("grpc", "http")  # see the docstring
    points = [report.PointResult("light", config, p, "on", 64) for p in protocols]
    with running(argv, workdir / f"{config}.log", cwd=bench.REPO) as server:
        try:
            urls = wait_ready(server, config, workdir)
            for protocol in protocols:  # warm-up
                spec = perf.LoadSpec(
                    "light", _url(urls, protocol, config), protocol, 64, profile.warmup_ms, 3,
                    extra=tuple(loadgen_flags(config, protocol, workdir)),
                )  # fmt: skip
                perf.run(analyzer, spec, workdir, workdir / "input.json")
        except (ServerError, perf.LoadGeneratorError) as exc:
            return [dataclasses.replace(p, error=str(exc).splitlines()[0]) for p in points]
        looped = python_grpc_point(config, urls["grpc"], workdir, profile, server)
        return [
            looped,
            *(
                bench.measure_point(
                    dataclasses.replace(p),
                    {p.protocol: _url(urls, p.protocol, config)},
                    server,
                    analyzer,
                    profile,
                    workdir,
                    extra=loadgen_flags(config, p.protocol, workdir),
                )
                for p in points
            ),
        ]


def python_grpc_point(
    config: str, address: str, folder: Path, profile: bench.Profile, server: ServerProcess
) -> report.PointResult:
    """64 ModelInfer calls kept in flight on one grpc.aio channel for the profile's windows
    (after a warm-up): req/s and latencies, with the token as metadata where needed."""
    credentials = None
    if "tls" in config:
        mutual = config == "mtls"
        credentials = grpc.ssl_channel_credentials(
            (folder / "ca.crt").read_bytes(),
            (folder / "client.key").read_bytes() if mutual else None,
            (folder / "client.crt").read_bytes() if mutual else None,
        )
    metadata = (("authorization", f"Bearer {TOKEN}"),) if "tokens" in config else ()
    seconds = profile.trials * profile.window_ms / 1000
    cpu_before, start = server.cpu_seconds(), time.monotonic()
    rate, p50, p99, errors = asyncio.run(
        _closed_loop(address, credentials, metadata, profile.warmup_ms / 1000, seconds)
    )
    # Over the warm-up too: a small share of the whole.
    cpu = 100 * (server.cpu_seconds() - cpu_before) / (time.monotonic() - start)
    point = report.PointResult("light", config, "py-grpc", "on", 64, rate, p50, p99)
    point = dataclasses.replace(point, server_cpu_percent=cpu)
    if errors:
        point = dataclasses.replace(point, error=f"{errors} calls failed")
    print(f"  {report.text_table([point]).splitlines()[-1]}", flush=True)
    return point


async def _closed_loop(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    metadata: tuple[tuple[str, str], ...],
    warmup: float,
    seconds: float,
) -> tuple[float, float, float, int]:
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials)
    call = channel.unary_unary(clients.GRPC_METHOD)
    requests = clients.grpc_requests()
    latencies: list[float] = []
    errors = 0
    measuring_from = time.monotonic() + warmup
    end = measuring_from + seconds

    async def worker(offset: int) -> None:
        nonlocal errors
        index = offset
        while (start := time.monotonic()) < end:
            try:
                await call(requests[index % len(requests)], metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
            if start >= measuring_from:
                latencies.append(time.monotonic() - start)
            index += 64

    async with channel:
        await asyncio.gather(*(worker(i) for i in range(64)))
    if not latencies:
        return report.NAN, report.NAN, report.NAN, errors
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return len(latencies) / seconds, float(p50), float(p99), errors


def _url(urls: dict[str, str], protocol: str, config: str) -> str:
    if protocol == "http" and "tls" in config:
        return f"https://{urls['http']}"
    return urls[protocol]


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    cli.add_argument("--perf-analyzer", type=Path, default=perf.DEFAULT_PATH)
    cli.add_argument("--quick", action="store_true", help="short windows")
    cli.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma list of " + "|".join(CONFIGS)
    )
    cli.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians")
    cli.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = cli.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or not set(configs) <= set(CONFIGS):
        cli.error(f"--configs takes {', '.join(CONFIGS)}")
    try:
        analyzer = perf.find_perf_analyzer(args.perf_analyzer)
    except perf.LoadGeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = bench.QUICK if args.quick else bench.FULL
    started = time.monotonic()
    header = {
        **report.machine(),
        "load generator": f"{analyzer.version()} ({analyzer.path})",
        "per point": f"{profile.trials} windows of {profile.window_ms} ms, concurrency 64",
        "rounds": f"{args.repeat} (numbers are medians)" if args.repeat > 1 else "1",
    }
    rounds: list[list[report.PointResult]] = []
    with tempfile.TemporaryDirectory(prefix="modelgate-secure-") as tmp:
        workdir = Path(tmp)
        make_certificates(workdir)
        (workdir / "tokens").write_text(f"bench:{TOKEN}\n")
        perf.write_input_data(workdir / "input.json")
        _, stores = bench.prepare_models(workdir, ["light"])
        for index in range(max(args.repeat, 1)):
            rounds.append([])
            for config in configs:
                print(f"round {index + 1}: {config}", flush=True)
                rounds[-1] += measure_config(config, stores, analyzer, profile, workdir)
    points = report.median_points(rounds)
    header = report.finish_header(header, started)
    notes = _costs(points)
    print()
    for key, value in header.items():
        print(f"{key}: {value}")
    print()
    print(report.text_table(points))
    for note in notes:
        print(note)
    if args.markdown:
        print()
        print(report.markdown_table(points))
    out = report.results_path("secure_cost")
    doc = {
        "machine": header,
        "rounds": [[dataclasses.asdict(p) for p in run] for run in rounds],
        "median": [dataclasses.asdict(p) for p in points],
        "costs": notes,
    }
    report.write_json(out, doc)
    print(f"\nresults: {out}")
    return 0


def _costs(points: list[report.PointResult]) -> list[str]:
    """Each configuration's throughput, and its requests per second of server CPU (what a
    busy machine's share of CPU does not change), against plain's, per protocol."""
    notes = []
    for protocol in ("grpc", "py-grpc", "http"):
        base = next((p for p in points if p.server == "plain" and p.protocol == protocol), None)
        if base is None:
            continue
        for p in points:
            if p.protocol == protocol and p.server != "plain":
                change = 100 * (p.requests_per_second / base.requests_per_second - 1)
                efficiency = 100 * (_per_cpu(p) / _per_cpu(base) - 1)
                notes.append(
                    f"{protocol} {p.server}: {change:+.0f}% req/s, {efficiency:+.0f}% req per "
                    f"server CPU second ({_per_cpu(p):,.0f} against {_per_cpu(base):,.0f})"
                )
    return notes


def _per_cpu(point: report.PointResult) -> float:
    return point.requests_per_second / (point.server_cpu_percent / 100)


if __name__ == "__main__":
    sys.exit(main())
