"""The ops console in a real browser: headless Chromium (OS packages) against ``legato web`` and a real
stack (NATS, Postgres, every service as a process). Screenshots go to LEGATO_SCREENSHOTS_DIR (docs/img)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from legato.config.settings import Settings
from legato.security.keyring import Keyring
from tests.e2e.test_signals import CHAIN_A, CHAIN_B, JOINED
from tests.support.stack import running_stack, wait_for
from tests.web.support import browser, running_console, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

LIVE = """
id: web-live
description: extract, transform and load, for the console's live graph
run_strategy: {type: parallel, max_concurrency: 5}
triggers:
  - {type: cron, id: nightly, cron: "0 3 * * *"}
steps:
  - {id: extract, type: shell, command: "while [ ! -e GATE ]; do sleep 0.1; done"}
  - {id: transform, type: shell, command: "sleep 1", depends_on: [extract]}
  - {id: load, type: noop, depends_on: [transform]}
  - {id: report, type: noop, depends_on: [extract]}
"""

QUEUE = """
id: web-queue
run_strategy: {type: sequential}
steps:
  - {id: long, type: shell, command: "sleep 120"}
"""


def login(driver: Any, console: Any, role: str) -> None:
    driver.get(console.login_url(role))
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.ID, "who"))
    assert driver.find_element(By.ID, "who").text == role
    assert "token" not in driver.current_url  # the one-click URL's token is not left in the address bar


def node_statuses(driver: Any) -> dict[str, str]:
    return {
        g.get_attribute("data-step"): g.get_attribute("data-status")
        for g in driver.find_elements(By.CSS_SELECTOR, "#graph g.node")
    }


def post_from_page(driver: Any, url: str, fields: dict[str, str]) -> int:
    """POST a form from inside the logged-in page (same origin, with its cookie): the HTTP status."""
    return int(
        driver.execute_async_script(
            """
            const [url, fields, done] = arguments;
            fetch(url, {method: "POST", body: new URLSearchParams(fields), redirect: "manual",
                        credentials: "same-origin"}).then(r => done(r.type === "opaqueredirect" ? 303 : r.status));
            """,
            url,
            fields,
        )
    )


def page_csrf(driver: Any) -> str:
    return str(
        driver.find_element(By.CSS_SELECTOR, "form[action='/logout'] input[name=csrf]").get_attribute("value")
    )


async def test_a_runs_steps_turn_green_live_without_reload(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        gate = tmp_path / "extract-may-end"  # extract runs until the test has seen it running
        await client.push(LIVE.replace("GATE", str(gate)))
        with (
            running_console(settings, keyring, tmp_path, jaeger_url="http://jaeger.example:16686") as console,
            browser() as driver,
        ):
            login(driver, console, "viewer")
            run = await client.start("web-live")
            driver.get(f"{console.url}/runs/{run.instance_id}")
            driver.execute_script("window.__notReloaded = true;")
            WebDriverWait(driver, 15).until(lambda d: len(node_statuses(d)) == 4)
            WebDriverWait(driver, 15).until(
                lambda d: node_statuses(d)["extract"] in ("running", "dispatched")
            )
            assert node_statuses(driver)["load"] == "pending"
            screenshot(driver, "run-live", tmp_path)
            gate.touch()
            WebDriverWait(driver, 60).until(
                lambda d: set(node_statuses(d).values()) == {"succeeded"}, "steps did not all turn green"
            )
            assert driver.execute_script("return window.__notReloaded === true;")
            assert driver.find_element(By.ID, "run-status").text == "succeeded"
            fill = driver.find_element(By.CSS_SELECTOR, "g.node[data-step=load] rect").value_of_css_property(
                "fill"
            )
            assert fill == "rgb(46, 157, 74)"  # green
            # a click on a step shows its attempts
            driver.find_element(By.CSS_SELECTOR, "g.node[data-step=extract]").click()
            panel = driver.find_element(By.ID, "step-panel")
            assert "extract: succeeded" in panel.text and "Attempt 1" in panel.text
            link = driver.find_element(By.ID, "jaeger").get_attribute("href")
            assert link.startswith("http://jaeger.example:16686/trace/")
            screenshot(driver, "run", tmp_path)
            # the fleet shows the workflow, its strategy, the run in its strip and the next cron fire
            driver.get(console.url + "/")
            row = driver.find_element(By.CSS_SELECTOR, "tr[data-workflow=web-live]")
            assert "parallel" in row.text and "03:00:00" in row.text
            assert row.find_elements(By.CSS_SELECTOR, ".strip .dot.s-succeeded")
            screenshot(driver, "fleet", tmp_path)
        await wait_for(client, run.instance_id)


async def test_queued_run_shows_why_and_viewer_cannot_stop(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(QUEUE)
        first = await client.start("web-queue")
        second = await client.start("web-queue")
        await wait_for(client, first.instance_id, statuses=("running",))
        with running_console(settings, keyring, tmp_path) as console, browser() as driver:
            login(driver, console, "viewer")
            driver.get(f"{console.url}/workflows/web-queue")
            row = driver.find_element(By.CSS_SELECTOR, f"#queue tr[data-run='{second.instance_id}']")
            assert "queued at position 1" in row.text and first.instance_id in row.text
            screenshot(driver, "workflow-queue", tmp_path)
            # a viewer sees no action buttons on a run…
            driver.get(f"{console.url}/runs/{first.instance_id}")
            assert driver.find_elements(By.ID, "graph")
            assert not driver.find_elements(By.CSS_SELECTOR, ".btn-stop, .btn-kill, #actions")
            # …and a forged stop (with a valid CSRF token) is refused by the server
            status = post_from_page(
                driver,
                f"/runs/{first.instance_id}/action",
                {"csrf": page_csrf(driver), "verb": "stop", "reason": "forged"},
            )
            assert status == 403
            await asyncio.sleep(1.0)
            assert (await client.get(first.instance_id))["status"] == "running"
            # the workflow page follows the queue live: once the first run is killed the second starts
            driver.get(f"{console.url}/workflows/web-queue")
            assert driver.find_elements(By.CSS_SELECTOR, f"#queue tr[data-run='{second.instance_id}']")
            driver.execute_script("window.__notReloaded = true;")
            await client.instance_action("kill", first.instance_id, reason="make room")
            WebDriverWait(driver, 30).until(
                lambda d: not d.find_elements(By.CSS_SELECTOR, f"#queue tr[data-run='{second.instance_id}']"),
                "the queued run stayed in the queue",
            )
            assert driver.execute_script("return window.__notReloaded === true;")
        await client.instance_action("kill", second.instance_id, reason="test over")


async def test_operator_stops_a_run_with_a_reason_and_the_timeline_shows_it(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(QUEUE)
        run = await client.start("web-queue")
        await wait_for(client, run.instance_id, statuses=("running",))
        with running_console(settings, keyring, tmp_path) as console, browser() as driver:
            login(driver, console, "operator")
            driver.get(f"{console.url}/runs/{run.instance_id}")
            # without the CSRF token the same POST is refused
            assert (
                post_from_page(driver, f"/runs/{run.instance_id}/action", {"verb": "stop", "reason": "x"})
                == 403
            )
            assert (await client.get(run.instance_id))["status"] == "running"
            driver.find_element(By.CSS_SELECTOR, "#actions summary").click()
            form = driver.find_element(By.CSS_SELECTOR, "form.action-stop")
            form.find_element(By.NAME, "reason").send_keys("disk full on the warehouse")
            form.find_element(By.CSS_SELECTOR, "button.btn-stop").click()

            # Live updates re-render the timeline as the run's events arrive: a row found a moment ago
            # may be replaced before it is read, so it is found and read in one try, retried if stale.
            def stopped_row(d: Any) -> tuple[str, str] | None:
                rows = d.find_elements(By.CSS_SELECTOR, "#timeline tr[data-event=stopped]")
                return (rows[0].find_element(By.CLASS_NAME, "actor").text, rows[0].text) if rows else None

            actor, text = WebDriverWait(
                driver, 30, ignored_exceptions=(StaleElementReferenceException,)
            ).until(stopped_row, "the timeline never showed the stop")
            assert actor == "operator"
            assert "disk full on the warehouse" in text
            WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: d.find_element(By.ID, "run-status").text == "stopped",
                "the status never said stopped",
            )
            screenshot(driver, "run-stopped", tmp_path)
        info = await client.get(run.instance_id)
        assert info["status"] == "stopped" and info["reason"]["by"] == "operator"


async def test_an_admin_sets_the_run_strategy_with_a_reason_through_the_form(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(QUEUE)
        with running_console(settings, keyring, tmp_path) as console, browser() as driver:
            login(driver, console, "operator")
            driver.get(f"{console.url}/workflows/web-queue")
            assert not driver.find_elements(By.ID, "strategy-actions")  # an operator may not
            login(driver, console, "admin")
            driver.get(f"{console.url}/workflows/web-queue")
            driver.find_element(By.CSS_SELECTOR, "#strategy-actions summary").click()
            form = driver.find_element(By.CSS_SELECTOR, "form.action-strategy")
            Select(form.find_element(By.NAME, "run_strategy")).select_by_visible_text("parallel")
            limit = form.find_element(By.NAME, "max_concurrency")
            limit.clear()
            limit.send_keys("4")
            form.find_element(By.NAME, "reason").send_keys("backlog after the outage")
            form.find_element(By.CSS_SELECTOR, "button.btn-strategy").click()
            # read in one go: a live refresh may swap #wf-facts between a find and a read
            facts_js = "const f = document.getElementById('wf-facts'); return f ? f.textContent : '';"
            WebDriverWait(driver, 30).until(
                lambda d: "set by admin: backlog after the outage" in d.execute_script(facts_js),
                "the page never showed who set the strategy and why",
            )
            assert "parallel ≤4" in driver.execute_script(facts_js)
            screenshot(driver, "workflow-strategy", tmp_path)
        now = await client.call("workflow.status", {"workflow_id": "web-queue"})
        assert (now["run_strategy"], now["max_concurrency"]) == ("parallel", 4)
        assert now["strategy_change"]["by"] == "admin"


BACKFILLED = """
id: web-backfill
run_strategy: {type: parallel, max_concurrency: 20}
params:
  day: {type: string}
steps:
  - {id: work, type: shell, command: "sleep 0.5"}
"""


async def test_an_operator_cancels_a_backfill_and_live_updates_spare_the_reason_being_typed(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(BACKFILLED)
        body = {
            "workflow_id": "web-backfill",
            "start": "2026-01-01",
            "end": "2026-04-01",
            "params": {"day": "${backfill.period_start}"},
            "concurrency": 2,
        }
        bf = (await client.call("backfill.start", body))["backfill_id"]
        with running_console(settings, keyring, tmp_path) as console, browser() as driver:
            login(driver, console, "operator")
            driver.get(f"{console.url}/workflows/web-backfill")
            row = f"#backfills tr[data-backfill='{bf}']"
            field = f"{row} form.backfill-cancel input[name=reason]"

            def focused(d: Any) -> Any:
                # Until the field has the focus, a live update may re-render the row (and the field)
                # between finding it and clicking it; once focused, the page spares it (checked below).
                element = d.find_element(By.CSS_SELECTOR, field)
                element.click()
                return element if d.switch_to.active_element == element else False

            reason = WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
                focused
            )

            async def runs_end(more: int) -> None:
                """Until ``more`` runs of the backfill ended (each a live update of the page), and the
                browser had a moment to receive and handle those updates."""
                finished = (await client.call("backfill.show", {"backfill_id": bf}))["finished"]
                for _ in range(150):
                    if (await client.call("backfill.show", {"backfill_id": bf}))[
                        "finished"
                    ] >= finished + more:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)

            reason.send_keys("half typed")
            await runs_end(3)  # the field keeps its text
            reason = driver.find_element(By.CSS_SELECTOR, f"{row} form.backfill-cancel input[name=reason]")
            assert reason.get_attribute("value") == "half typed"
            reason.send_keys(", now done")
            # Tab to the Cancel button (past the checkbox) and let updates arrive while it has the focus,
            # as it has between a mouse press and its release: its row is not re-rendered (a new button
            # there would get the release, no click would follow, and the cancel would silently not
            # happen). The keyboard, not the pointer: the tables above the row grow as runs end, so a
            # pointer aimed a moment before can land on something else.
            reason.send_keys(Keys.TAB, Keys.TAB)
            button = driver.find_element(By.CSS_SELECTOR, f"{row} button.btn-backfill-cancel")
            assert driver.switch_to.active_element == button
            await runs_end(2)
            assert button.is_enabled()  # the same element: StaleElementReferenceException if replaced
            button.send_keys(Keys.ENTER)
            WebDriverWait(driver, 30).until(
                lambda d: (
                    "cancelled by operator: half typed, now done"
                    in d.execute_script(
                        "const r = document.querySelector(arguments[0]); return r ? r.textContent : '';", row
                    )
                ),
                "the backfill list never showed the cancel",
            )
            screenshot(driver, "workflow-backfill-cancelled", tmp_path)
        shown = await client.call("backfill.show", {"backfill_id": bf})
        assert (shown["status"], shown["cancelled_by"]) == ("cancelled", "operator")


async def test_a_pending_join_shows_the_missing_leg_and_lineage_is_a_graph(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(JOINED.replace("{expiry}", "1h"))
        await client.push(CHAIN_A)
        await client.push(CHAIN_B)
        extract = await client.start("extract", {"day": "2024-05-01"})
        await wait_for(client, extract.instance_id)
        sent = await client.send_signal(
            "orders_ready", {"status": "done", "date": "2024-05-01", "region": "eu", "rows": 7}
        )
        for _ in range(100):
            pending = await client.call("signal.pending", {"workflow_id": "billing"})
            if pending["triggers"] and pending["triggers"][0]["tuples"]:
                break
            await asyncio.sleep(0.1)
        with running_console(settings, keyring, tmp_path) as console, browser() as driver:
            login(driver, console, "viewer")
            driver.get(f"{console.url}/signals")
            row = driver.find_element(By.CSS_SELECTOR, "#pending tr.join")
            assert row.find_element(By.CLASS_NAME, "missing").text == "payments_ready"
            assert sent.id in row.find_element(By.CLASS_NAME, "arrived").text
            assert "date=2024-05-01" in row.text
            screenshot(driver, "signals", tmp_path)
            # lineage of the extract run: run -> the signal it published -> the run that signal started
            for _ in range(100):
                lineage = await client.call("signal.lineage", {"instance_id": extract.instance_id})
                if lineage["run"]["published"] and lineage["run"]["published"][0].get("triggered"):
                    break
                await asyncio.sleep(0.1)
            driver.get(f"{console.url}/signals?instance_id={extract.instance_id}")
            WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lineage-graph a"))
            shown = [
                a.get_attribute("data-node")
                for a in driver.find_elements(By.CSS_SELECTOR, "#lineage-graph a")
            ]
            assert shown[0] == f"run:{extract.instance_id}"
            assert any(n.startswith("signal:extract_done:") for n in shown)
            assert len([n for n in shown if n.startswith("run:")]) == 2  # extract and the transform it led to
            assert len(driver.find_elements(By.CSS_SELECTOR, "#lineage-graph path.edge")) == 2
            screenshot(driver, "lineage", tmp_path)


FOREACH = """
id: web-foreach
run_strategy: {type: parallel, max_concurrency: 5}
steps:
  - id: fan
    type: foreach
    foreach:
      over: "range(6)"
      concurrency: 3
      steps:
        - {id: nap, type: shell, command: "sleep 0.5"}
  - {id: after, type: noop, depends_on: [fan]}
"""


async def test_a_foreach_node_counts_its_iterations_and_links_to_them(
    settings: Settings, keyring: Keyring, tmp_path: Path
) -> None:
    async with running_stack(settings, tmp_path) as (_, client):
        await client.push(FOREACH)
        with running_console(settings, keyring, tmp_path) as console, browser() as driver:
            login(driver, console, "viewer")
            run = await client.start("web-foreach")
            driver.get(f"{console.url}/runs/{run.instance_id}")
            label = "g.node[data-step=fan] text"
            WebDriverWait(driver, 60).until(
                lambda d: (
                    d.find_elements(By.CSS_SELECTOR, label)
                    and d.find_element(By.CSS_SELECTOR, label).text == "fan · 6/6"
                ),
                "the foreach node never counted its 6 iterations",
            )
            WebDriverWait(driver, 30).until(lambda d: node_statuses(d)["after"] == "succeeded")
            driver.find_element(By.CSS_SELECTOR, "g.node[data-step=fan]").click()

            def open_children(d: Any) -> bool:
                # The live refresh may re-render the step panel between finding the link and clicking.
                d.find_element(By.LINK_TEXT, "child runs →").click()
                return True

            WebDriverWait(driver, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
                open_children
            )
            rows = driver.find_elements(By.CSS_SELECTOR, "#children tbody tr")
            assert len(rows) == 6 and all("succeeded" in r.text for r in rows)
            screenshot(driver, "foreach-children", tmp_path)
