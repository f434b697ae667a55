"""The support console in a real headless browser (Debian's chromium, driven by Playwright):
search an order, see its timeline and a backordered line's ETA, add a tag and resolve an
escalation — and the effect shows up on support.actions with the acting user; a message whose
promise later truth broke is flagged on the page."""

from __future__ import annotations

import shutil
import signal

import pytest
from orderops_tools.testing import decode_all, poll_json, read_topic
from playwright.async_api import async_playwright
from story import eta_slipped
from test_timeline_on_kafka import publish, start

from orderops.model.catalog import SUPPORT_ACTIONS

pytestmark = pytest.mark.broker
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: `make test` installs it (make browser)")
async def test_an_agent_works_an_order_in_the_console(catalog_topics, run_id, tmp_path, support_users):
    bootstrap = catalog_topics
    order_id = f"ui-{run_id}"
    timeline = start(bootstrap, f"ui{run_id}", tmp_path)
    try:
        await timeline.wait_ready()
        publish(bootstrap, order_id)
        await poll_json(timeline, f"/orders/{order_id}", lambda v: any(e["state"] == "open"
                                                                       for e in v["escalations"].values()), timeout=120)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page()
            async def answer(dialog) -> None:  # the console asks how it was resolved
                await dialog.accept("called the customer back")

            page.on("dialog", answer)
            script_errors = []
            page.on("console", lambda m: script_errors.append(m.text) if m.type == "error" else None)
            response = await page.goto(timeline.url + "/")
            assert "script-src 'sha256-" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"
            # Signing in: a wrong token is refused on the page; the right one opens the console.
            await page.wait_for_selector("#signinform")
            await page.fill("#user", "lee")
            await page.fill("#token", "not-a-token")
            await page.click("#signinform button")
            await page.wait_for_selector("#signinerror:has-text('not authenticated')")
            assert await page.locator("main").is_hidden()
            await page.fill("#token", support_users.tokens["lee"])
            await page.click("#signinform button")
            await page.wait_for_selector("#whoami:has-text('lee · lead')")
            await page.fill("#q", order_id)
            await page.click("#search button")
            await page.wait_for_selector("#order-state")
            assert await page.inner_text("#order-state") == "Confirmed"
            assert await page.inner_text("#fulfillment-state") == "Partly shipped"
            assert await page.inner_text("#summary") == "2 of 3 items on the way; the Teapot is backordered until 12 Nov"
            await page.screenshot(path=tmp_path / "console-order.png", full_page=True)
            # The queue: each escalation with its age against how soon the rule wants an answer.
            queued = page.locator("#queue li", has_text=order_id).filter(has_text="repeat-contact")
            assert "answer within 4 h" in await queued.inner_text() and "open " in await queued.inner_text()
            teapot = page.locator("#lines tr", has_text="Teapot")
            assert "ETA 2026-11-12" in await teapot.inner_text()
            timeline_text = await page.inner_text("#timeline")
            assert "1 of line l2 backordered until 12 Nov" in timeline_text and "parcel P1 dispatched" in timeline_text
            await page.uncheck("#filters input[data-domain='support']")
            assert not await page.locator("#timeline [data-domain='support']").first.is_visible()

            await page.fill("#newtag", "vip")
            await page.click("#tagform button")
            await page.wait_for_selector("#tags .tag:has-text('vip')", timeout=20000)
            # A tag an agent applied can be taken off again (DELETE /orders/{id}/tags/{tag}: TagRemoved).
            await page.fill("#newtag", "wrong-guess")
            await page.click("#tagform button")
            await page.wait_for_selector("#tags .tag:has-text('wrong-guess')", timeout=20000)
            await page.click("[data-untag='wrong-guess']")
            await page.wait_for_selector("#tags .tag:has-text('wrong-guess')", state="detached", timeout=20000)
            assert "vip" in await page.inner_text("#tags")
            # Acting stamps the order with today's time, so more escalations may come due: resolve the
            # repeat-contact one and wait for its button to go.
            repeat = "#escalations [data-resolve*='repeat-contact']"
            await page.click(repeat)
            await page.wait_for_selector(repeat, state="detached", timeout=20000)
            # The teapot's ETA slips after the message promised it: the message is flagged.
            publish(bootstrap, order_id, story=eta_slipped(days=4, order_id=order_id))
            await poll_json(timeline, f"/orders/{order_id}", lambda v: any(n.get("broken") for n in v["notifications"]),
                            timeout=60)
            await page.fill("#q", order_id)
            await page.click("#search button")
            promise = page.locator("#order .promise")
            await promise.wait_for()
            assert await promise.inner_text() == ("promise broken 2026-11-05: promised Teapot by 12 Nov; now expected "
                                                  "16 Nov · not corrected")
            # A search that finds a customer's orders takes the order off the screen: never another
            # customer's order left beside the results.
            await page.fill("#q", "ada@example.com")
            await page.click("#search button")
            await page.wait_for_selector("#pick")
            assert await page.locator("#order-state").count() == 0
            assert order_id in await page.inner_text("#orders")
            await page.screenshot(path=tmp_path / "console-customer.png", full_page=True)
            await page.click(f"#orders a[data-order='{order_id}']")
            await page.wait_for_selector("#order-state")
            for shot in ("console-order.png", "console-customer.png"):
                assert (tmp_path / shot).stat().st_size > 10_000, shot
            # The console's script ran under its content security policy without a violation.
            assert not [e for e in script_errors if "Content Security Policy" in e], script_errors
            await page.click("#signout")
            await page.wait_for_selector("#signinform")
            assert await page.evaluate("sessionStorage.getItem('orderops.token')") is None
            await browser.close()

        actions = decode_all(read_topic(bootstrap, SUPPORT_ACTIONS.name, keep=lambda m: m.key() == order_id.encode(),
                                        until=lambda got: len(got) >= 4), SUPPORT_ACTIONS)
        assert [(a.short_type, a.payload["actor"]["user_id"], a.payload.get("tag")) for a in actions] == [
            ("TagApplied", "lee", "vip"), ("TagApplied", "lee", "wrong-guess"), ("TagRemoved", "lee", "wrong-guess"),
            ("EscalationResolvedByAgent", "lee", None)]
        assert actions[3].payload["note"] == "called the customer back"
    finally:
        timeline.stop(signal.SIGKILL)
