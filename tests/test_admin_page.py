"""The admin web page (GET /) in a real headless Chromium, against the real proxy and backends.

Selenium drives Debian's chromium through Debian's chromedriver (packages ``chromium`` and
``chromium-driver``; .ci/run installs them). Without them this test fails: it never skips.
Selenium Manager is never asked to download anything (the paths are given, SE_OFFLINE is set).

The proxy runs in the test's event loop; every blocking WebDriver call runs in a thread
(``asyncio.to_thread``) so the proxy can answer the browser meanwhile. A screenshot of each
stage goes to the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from canaryproxy.admin.page import CONTENT_SECURITY_POLICY
from tests.support import Backend, RunningProxy, make_config, service, start_proxy, until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOKEN_KEY = "canaryproxy.admin.token"  # app.js's sessionStorage key
WAIT = 10.0
INJECT_INLINE_SCRIPT = """
const probe = document.createElement('script');
probe.textContent = 'window.inlineRan = true';
document.body.append(probe);
"""
T = TypeVar("T")


async def off_loop(call: Callable[..., T], *args: Any) -> T:
    """A blocking WebDriver call, in a thread: the proxy must keep answering the browser."""
    return await asyncio.to_thread(call, *args)


class Page:
    """The admin page in a headless Chromium: blocking calls, each used through off_loop."""

    def __init__(self, url: str, shots: Path) -> None:
        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(
            service=ChromeService(executable_path=str(CHROMEDRIVER)), options=options
        )
        self.url = url
        self.shots = shots

    def quit(self) -> None:
        self.driver.quit()

    def load(self) -> None:
        self.driver.get(self.url)

    def wait_for(self, check: Callable[[], object], what: str) -> None:
        WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(
            lambda _: check(), message=f"the page did not show {what}"
        )

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def count(self, css: str) -> int:
        return len(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def shows(self, css: str, words: str) -> None:
        self.wait_for(lambda: words in self.text(css), f"{words!r} in {css}")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def enter_token(self, token: str) -> None:
        field = self.find("#token")
        field.clear()
        field.send_keys(token, Keys.ENTER)

    def service_rows(self, name: str) -> dict[str, dict[str, str]]:
        """The pools table of a service's card: pool → column → text."""
        table = self.find(f'section[data-service="{name}"] table.pools')
        columns = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")][1:]
        return {
            row.find_element(By.TAG_NAME, "th").text: dict(
                zip(columns, [td.text for td in row.find_elements(By.TAG_NAME, "td")], strict=True)
            )
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        }

    def slide_weight_to(self, name: str, weight: float) -> None:
        """Drag the slider with the keyboard: Home (0), then one step (0.5) per arrow."""
        slider = self.find(f'section[data-service="{name}"] input.slider')
        slider.click()
        slider.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * int(weight / 0.5))

    def click(self, css: str) -> None:
        self.find(css).click()

    def type_into(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def accept_confirm(self) -> str:
        """Accept the window.confirm dialog (waiting for it); its text."""

        def alert_text() -> str | None:
            try:
                return str(self.driver.switch_to.alert.text)
            except NoAlertPresentException:
                return None

        self.wait_for(alert_text, "a confirmation dialog")
        text = str(self.driver.switch_to.alert.text)
        self.driver.switch_to.alert.accept()
        return text

    def script(self, js: str) -> Any:
        return self.driver.execute_script(js)

    def console(self) -> list[dict[str, Any]]:
        get_log: Callable[[str], list[dict[str, Any]]] = self.driver.get_log  # untyped upstream
        return get_log("browser")


@pytest.fixture
def browser_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail, never skip, without Debian's chromium and chromedriver; never download one."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    assert not missing, (
        f"missing {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does)"
    )
    monkeypatch.setenv("SE_OFFLINE", "true")


@contextlib.asynccontextmanager
async def traffic(url: str) -> AsyncIterator[list[int]]:
    """Requests through the proxy, four at a time, all along: the charts have something to
    draw. Yields the statuses so far."""
    statuses: list[int] = []

    async def loop(session: aiohttp.ClientSession) -> None:
        while True:
            async with session.get(f"{url}/") as resp:
                await resp.read()
                statuses.append(resp.status)
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(loop(session)) for _ in range(4)]
        try:
            yield statuses
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def admin_get(proxy: RunningProxy, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.admin_url}{path}", headers=AUTH) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_the_page_is_public_and_carries_a_strict_csp(
    pools: tuple[Backend, Backend],
) -> None:
    stable, canary = pools
    config = make_config({"web": service([stable.url], [canary.url], canary_weight=10)})
    async with start_proxy(config) as proxy, aiohttp.ClientSession() as session:
        for path, media_type in [
            ("/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ]:
            async with session.get(f"{proxy.admin_url}{path}") as resp:  # no token
                assert resp.status == 200
                assert resp.content_type == media_type
                assert resp.charset == "utf-8"
                assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Cache-Control"] == "no-cache"
                assert "Set-Cookie" not in resp.headers
        async with session.get(f"{proxy.admin_url}/") as resp:
            page = await resp.text()
        # Nothing inline for the CSP to refuse: no <script> body, no style attribute, no on….
        assert '<script src="/ui/app.js" defer></script>' in page
        assert "<style" not in page
        assert " style=" not in page
        assert re.search(r"\son[a-z]+=", page) is None
        async with session.get(f"{proxy.admin_url}/ui/app.js") as resp:
            script = await resp.text()
        assert "innerHTML" not in script
        assert "document.cookie" not in script
        async with session.get(f"{proxy.admin_url}/ui/nope.js") as resp:
            assert resp.status == 404


async def test_the_admin_page_in_a_real_browser(
    pools: tuple[Backend, Backend], tmp_path: Path, browser_ready: None
) -> None:
    stable, canary = pools
    stable.delay = canary.delay = 0.002
    stable.fail_fraction, canary.fail_fraction = 0.005, 0.01
    config = make_config(
        {
            "web": service(
                [stable.url],
                [canary.url],
                canary_weight=20,
                rollout={"steps": [5, 25, 50, 100], "min_step_duration": "1h"},
            )
        }
    )
    async with start_proxy(config) as proxy, traffic(proxy.url) as statuses:
        web = proxy.proxy.services.get("web")
        await until(lambda: _at_least(statuses, 150), within=WAIT)
        page = await off_loop(Page, f"{proxy.admin_url}/", tmp_path)
        try:
            # Without a token: it asks for one and shows no service data.
            await off_loop(page.load)
            await off_loop(page.shows, "#status", "Enter the admin token")
            assert await off_loop(page.count, "section.service") == 0
            assert "20 %" not in await off_loop(page.text, "body")
            await off_loop(page.shot, "1-no-token")

            # A wrong token: 401, said so, still nothing shown.
            await off_loop(page.enter_token, "not-the-token")
            await off_loop(page.shows, "#status", "missing or wrong (401)")
            assert await off_loop(page.count, "section.service") == 0
            await off_loop(page.shot, "2-wrong-token")

            # The right token: the service, its weight, its pools' numbers, a few samples.
            await off_loop(page.enter_token, TOKEN)
            await off_loop(page.shows, 'section[data-service="web"] h2', "web")
            await off_loop(page.shows, 'section[data-service="web"] .weight', "20 %")
            rows = await off_loop(page.service_rows, "web")
            assert set(rows) == {"stable", "canary"}
            for pool in ("stable", "canary"):
                assert int(rows[pool]["requests"].replace(",", "")) > 0, rows
                assert rows[pool]["p99"].endswith(" ms"), rows
                assert rows[pool]["backends up"] == "1/1", rows
            await off_loop(page.shows, "#audit", "no changes yet")
            await asyncio.sleep(4.5)  # two more refreshes: the charts have lines
            assert await off_loop(page.count, 'section[data-service="web"] path.line') == 6
            rows = await off_loop(page.service_rows, "web")
            assert all(rows[pool]["req/s"].endswith("/s") for pool in rows), rows
            assert rows["canary"]["req/s"] != "0.0/s", rows
            await off_loop(page.shot, "3-services")

            # Set the weight with the slider and the button.
            await off_loop(page.slide_weight_to, "web", 30)
            assert await off_loop(page.script, "return document.querySelector('.exact').value")
            await off_loop(page.click, '[data-service="web"] button[data-action="weight"]')
            await until(_is(lambda: web.knobs.canary_weight == 30.0), within=WAIT)
            await off_loop(page.shows, 'section[data-service="web"] .weight', "30 %")
            await off_loop(page.shows, "#audit", "set_weight")
            assert (await admin_get(proxy, "/admin/services/web"))["canary_weight"] == 30.0

            # Eject, with a reason, after the confirmation.
            await off_loop(page.type_into, 'section[data-service="web"] .reason', "bad build")
            await off_loop(page.click, '[data-service="web"] button[data-action="eject"]')
            assert "Eject the canary of web" in await off_loop(page.accept_confirm)
            await until(_is(lambda: web.knobs.is_ejected), within=WAIT)
            state = await admin_get(proxy, "/admin/services/web")
            assert (state["ejected"], state["eject_reason"]) == (True, "bad build")
            await off_loop(page.shows, 'section[data-service="web"] .ejected', "EJECTED")
            await off_loop(page.shows, 'section[data-service="web"] .badge', "ejected")

            # The API's refusal is shown next to the control: no weight while ejected.
            await off_loop(page.click, '[data-service="web"] button[data-action="weight"]')
            await off_loop(page.shows, 'section[data-service="web"] .msg.error', "409: ")
            await off_loop(page.shot, "4-ejected")

            # Restore, then start the rollout and see its state.
            await off_loop(page.click, '[data-service="web"] button[data-action="restore"]')
            await until(_is(lambda: not web.knobs.is_ejected), within=WAIT)
            await off_loop(page.shows, 'section[data-service="web"] .msg.ok', "restored")
            await off_loop(page.click, '[data-service="web"] button[data-action="start"]')
            await off_loop(page.shows, 'section[data-service="web"] .rollout', "progressing")
            await off_loop(page.shows, 'section[data-service="web"] .rollout', "step 1/4 (5 %)")
            plan = await admin_get(proxy, "/admin/services/web/rollout")
            assert (plan["state"], plan["step"]) == ("progressing", 0)
            await off_loop(page.shows, 'section[data-service="web"] .weight', "5 %")
            await off_loop(page.shows, "#audit", "rollout")
            await off_loop(page.shot, "5-rollout")

            # The token lives in sessionStorage and goes as a header, never as a cookie.
            assert await off_loop(page.script, "return document.cookie") == ""
            stored = f"return sessionStorage.getItem('{TOKEN_KEY}')"
            assert await off_loop(page.script, stored) == TOKEN

            # No CSP violation and no script error in the console: nothing SEVERE but the
            # failed loads the steps asked for (the wrong token's 401s, the refused 409).
            console = await off_loop(page.console)
            expected = ("status of 401", "status of 409")
            unexpected = [
                e["message"]
                for e in console
                if (e["level"] == "SEVERE" or "Content Security Policy" in e["message"])
                and not (e["source"] == "network" and any(x in e["message"] for x in expected))
            ]
            assert unexpected == [], unexpected
            assert any("status of 401" in e["message"] for e in console)  # the log is read

            # And the browser does enforce the policy: an injected inline script never runs.
            await off_loop(page.script, INJECT_INLINE_SCRIPT)
            await asyncio.sleep(0.2)
            assert await off_loop(page.script, "return window.inlineRan === undefined")
            refused = [e["message"] for e in await off_loop(page.console)]
            assert any("Content Security Policy" in m for m in refused), refused

            # Forget: the data goes away with the token.
            await off_loop(page.click, "#token-forget")
            await off_loop(page.shows, "#status", "Enter the admin token")
            assert await off_loop(page.count, "section.service") == 0
        finally:
            await off_loop(page.quit)
        assert all(status in (200, 500) for status in statuses)


async def _at_least(statuses: list[int], n: int) -> bool:
    return len(statuses) >= n


def _is(check: Callable[[], bool]) -> Callable[[], Any]:
    async def check_now() -> bool:
        return check()

    return check_now
