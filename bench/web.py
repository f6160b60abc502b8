"""The web console under load: server time to render the fleet page with 1,000 workflows and the run page
of a 10,000-iteration foreach, time to a rendered graph in headless Chromium, and the latency from a step's
lifecycle event (its commit time, ``at``) to the browser showing the new status (p50/p99).

Everything real: embedded nats-server (with nkeys) and PostgreSQL, every service a process, ``legato web``
a process, Chromium from the OS packages. Goals (issue 20): <= 1 s server time, <= 2 s to a rendered
graph, p99 event -> browser <= 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.web.support: the console and Chromium

from _servers import bench_servers, bench_settings, percentile, tie_to_bench, wait_api
from legato.client import LegatoClient
from legato.devstack.processes import Stack
from legato.protocol.events import StepEvent, decode_event
from legato.store import ensure_database, migrate_url
from tests.web.support import browser, http, running_console, session_cookie

FLEET_WF = """
id: fleet-{i:04d}
description: workflow number {i} of the fleet
run_strategy: {{type: parallel, max_concurrency: 5}}
triggers:
  - {{type: cron, id: nightly, cron: "{minute} 3 * * *"}}
steps:
  - {{id: only, type: noop}}
"""

FOREACH = """
id: big-foreach
run_strategy: sequential
params:
  n: {type: int, default: 10000}
steps:
  - id: prepare
    type: noop
  - id: fan
    type: foreach
    depends_on: [prepare]
    foreach:
      over: "range(params.n)"
      concurrency: 500
      steps:
        - {id: nothing, type: noop}
  - id: report
    type: noop
    depends_on: [fan]
"""

WIDE_LANES, WIDE_DEPTH = 100, 10  # a 1,000-step static graph: 100 lanes of 10 steps after one start step
WIDE = "id: wide\nrun_strategy: sequential\nsteps:\n  - {id: start, type: noop}\n" + "".join(
    f"  - {{id: l{lane:03d}d{depth}, type: noop, depends_on: [{f'l{lane:03d}d{depth - 1}' if depth else 'start'}]}}\n"
    for lane in range(WIDE_LANES)
    for depth in range(WIDE_DEPTH)
)

CHAIN_STEPS = 25
CHAIN = "id: chain\nrun_strategy: {type: parallel, max_concurrency: 5}\nsteps:\n" + "".join(
    f"  - {{id: s{i:02d}, type: shell, command: 'sleep 0.3'"
    + (f", depends_on: [s{i - 1:02d}]" if i else "")
    + "}\n"
    for i in range(CHAIN_STEPS)
)

WATCH = """
window.__seen = [];
const last = {};
const observer = new MutationObserver((records) => {
  const now = Date.now();
  for (const r of records) {
    const g = r.target;
    if (!g.dataset || !g.dataset.step || last[g.dataset.step] === g.dataset.status) continue;
    last[g.dataset.step] = g.dataset.status;
    window.__seen.push([g.dataset.step, g.dataset.status, now]);
  }
});
observer.observe(document.getElementById("graph"), {subtree: true, attributes: true, attributeFilter: ["data-status"]});
"""


def timed_get(url: str, cookie: str, times: int) -> list[float]:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        status, _, _ = http(url, cookie=cookie, timeout=60)
        out.append(time.perf_counter() - t0)
        assert status == 200, (url, status)
    return out


def rendered_graph(driver: Any, url: str) -> float:
    """Seconds from navigation start to the graph drawn (laid out and in the DOM), on the page's clock."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#graph g.node"))
    return float(driver.execute_script("return window.legatoGraphDrawnAt;")) / 1000


async def run(args: argparse.Namespace) -> None:
    with bench_servers("legato_web", auth=True) as servers:
        assert servers.keyring is not None
        settings = bench_settings(servers)
        await ensure_database(settings.database_url)
        await migrate_url(settings.database_url)
        stack = tie_to_bench(
            Stack(settings, servers.tmp / "logs", concurrency=128, extra_env={"OTEL_SDK_DISABLED": "true"})
        )
        stack.start()
        client = await LegatoClient.connect(
            settings.nats_url, namespace=settings.namespace, timeout=30, settings=settings
        )
        try:
            await wait_api(client)
            t0 = time.perf_counter()
            gate = asyncio.Semaphore(16)

            async def push(i: int) -> None:
                async with gate:
                    await client.push(FLEET_WF.format(i=i, minute=i % 60))

            await asyncio.gather(*(push(i) for i in range(args.workflows)))
            print(f"pushed {args.workflows} workflows in {time.perf_counter() - t0:.1f} s")
            await client.push(FOREACH)
            await client.push(CHAIN)
            await client.push(WIDE)
            wide = await client.start("wide")
            big = await client.start("big-foreach", {"n": args.iterations})
            for _ in range(3000):
                info = await client.get(big.instance_id, timeline_limit=0, steps_limit=10)
                if info["status"] in ("succeeded", "failed", "stopped"):
                    break
                await asyncio.sleep(0.2)
            print(f"foreach of {args.iterations} iterations: {info['status']}")
            with running_console(settings, servers.keyring, servers.tmp) as console:
                _, headers, _ = http(console.login_url("viewer"))
                cookie = session_cookie(headers)
                cold = timed_get(console.url + "/", cookie, 1)
                warm = timed_get(console.url + "/", cookie, args.repeat)
                search = timed_get(console.url + "/?q=fleet-09", cookie, args.repeat)
                run_page = timed_get(f"{console.url}/runs/{big.instance_id}", cookie, args.repeat)
                children = timed_get(
                    f"{console.url}/runs/{big.instance_id}/children/fan", cookie, args.repeat
                )
                wide_page = timed_get(f"{console.url}/runs/{wide.instance_id}", cookie, args.repeat)
                print(f"fleet page, {args.workflows} workflows (100 a page), server time:")
                print(f"  first (definitions not cached): {cold[0] * 1000:7.0f} ms")
                print(
                    f"  then p50 / max:                 {statistics.median(warm) * 1000:7.0f} / {max(warm) * 1000:.0f} ms"
                )
                print(f"  search p50:                     {statistics.median(search) * 1000:7.0f} ms")
                print(
                    f"run page, {args.iterations}-iteration foreach, server time p50 / max: "
                    f"{statistics.median(run_page) * 1000:.0f} / {max(run_page) * 1000:.0f} ms"
                )
                print(
                    f"  its child runs page (100 of {args.iterations}) p50: {statistics.median(children) * 1000:.0f} ms"
                )
                print(
                    f"run page, {WIDE_LANES * WIDE_DEPTH + 1}-step static graph, server time p50 / max: "
                    f"{statistics.median(wide_page) * 1000:.0f} / {max(wide_page) * 1000:.0f} ms"
                )
                with browser() as driver:
                    driver.get(console.login_url("viewer"))
                    shown = [
                        rendered_graph(driver, f"{console.url}/runs/{big.instance_id}") for _ in range(3)
                    ]
                    print(
                        f"foreach run: navigation -> rendered graph in Chromium, best / worst of 3: "
                        f"{min(shown):.2f} / {max(shown):.2f} s"
                    )
                    shown = [
                        rendered_graph(driver, f"{console.url}/runs/{wide.instance_id}") for _ in range(3)
                    ]
                    print(
                        f"{WIDE_LANES * WIDE_DEPTH + 1}-step run: navigation -> rendered graph (dagre layout), "
                        f"best / worst of 3: {min(shown):.2f} / {max(shown):.2f} s"
                    )
                    fleet_shown = []
                    for _ in range(3):
                        driver.get(console.url + "/")  # returns after the load event
                        fleet_shown.append(
                            float(
                                driver.execute_script(
                                    "const t = performance.getEntriesByType('navigation')[0];"
                                    "return t.loadEventEnd || performance.now();"
                                )
                            )
                            / 1000
                        )
                    print(
                        f"fleet page loaded in Chromium, best / worst of 3: {min(fleet_shown):.2f} / {max(fleet_shown):.2f} s"
                    )
                    # event -> browser latency
                    latencies: list[float] = []
                    events: dict[tuple[str, str, str], float] = {}

                    async def on_event(msg: Any) -> None:
                        event = decode_event(msg.data)
                        if isinstance(event, StepEvent):
                            events.setdefault((event.instance_id, event.step_id, event.status), event.at)

                    for _ in range(args.runs):
                        sub = await client.nc.subscribe(
                            client.topology.notify_filter("step", "chain"), cb=on_event
                        )
                        started = await client.start("chain")
                        await asyncio.to_thread(driver.get, f"{console.url}/runs/{started.instance_id}")
                        driver.execute_script(WATCH)
                        for _ in range(600):
                            info = await client.get(started.instance_id, timeline_limit=0)
                            if info["status"] in ("succeeded", "failed", "stopped"):
                                break
                            await asyncio.sleep(0.1)
                        await asyncio.sleep(1.0)
                        await sub.unsubscribe()
                        seen = driver.execute_script("return window.__seen;")
                        for step, status, ms in seen:
                            at = events.get((started.instance_id, step, status))
                            if at is not None:
                                latencies.append(ms / 1000 - at)
                    print(
                        f"step event (commit) -> browser shows it: {len(latencies)} changes over {args.runs} runs "
                        f"of a {CHAIN_STEPS}-step chain; p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                        f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
                    )
        finally:
            await client.close()
            await asyncio.to_thread(stack.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--runs", type=int, default=4, help="runs of the chain for the latency figure")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
