"""Issue 16: the web view in a real headless browser (Debian's chromium + chromedriver).

Selenium drives chromium through the pages a person would click through; screenshots are
written to the artifacts directory (``$DEVPID_TEST_ARTIFACTS``, default ``tmp/artifacts`` in
the checkout) and its path is printed. Where no browser is installed the tests skip and say
why (``.ci/run`` installs one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_webview import EVIL_REASON, Site, site  # noqa: F401  (module fixture)

ARTIFACTS = Path(os.environ.get("DEVPID_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parent.parent / "tmp" / "artifacts")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                       else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (it is in the [test] extra)")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except Exception as e:  # a browser that cannot start here (no display libs, sandbox...)
        pytest.skip(f"chromium could not be started: {str(e).splitlines()[0]}")
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nweb view screenshots: {ARTIFACTS}")
    yield driver
    driver.quit()


def _shot(driver: Any, name: str) -> Path:
    path = ARTIFACTS / f"webview-{name}.png"
    import base64

    # the whole page, not just the window (Chrome DevTools' capture beyond the viewport)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 1000
    return path


def _no_alert(driver: Any) -> None:
    """Nothing from an upload ran as script (an alert() would be open)."""
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018


def test_click_through_the_web_view(browser: Any, site: Site) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(site.server.url + "/")
    assert browser.title.startswith("devpid")
    assert "index-url = " in browser.find_element(By.TAG_NAME, "main").text
    _shot(browser, "home")
    browser.find_element(By.LINK_TEXT, site.stage).click()
    assert browser.current_url.endswith(f"/{site.stage}")
    assert site.project in browser.find_element(By.TAG_NAME, "main").text
    _shot(browser, "index")
    browser.find_element(By.LINK_TEXT, site.project).click()
    text = browser.find_element(By.TAG_NAME, "main").text
    assert EVIL_REASON in text  # shown as text, not run
    assert "<script>" in text
    _no_alert(browser)
    _shot(browser, "project")
    browser.find_element(By.LINK_TEXT, "2.0").click()
    description = browser.find_element(By.CSS_SELECTOR, ".description")
    assert description.find_element(By.TAG_NAME, "em").text == "emphasis"
    _no_alert(browser)
    _shot(browser, "version")
    browser.find_element(By.LINK_TEXT, "documentation").click()
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Demo docs"
    browser.switch_to.default_content()
    _shot(browser, "docs")
    browser.get(f"{site.server.url}/{site.stage}/{site.project}/1.0")
    assert browser.find_element(By.CSS_SELECTOR, ".description strong").text == "strong"
    _no_alert(browser)
    box = browser.find_element(By.CSS_SELECTOR, "header input[name=q]")
    box.send_keys("emphasis " + site.project.rsplit("-", 1)[1])
    box.submit()
    assert "/+search?q=" in browser.current_url
    results = browser.find_element(By.TAG_NAME, "main")
    assert "1 result for" in results.text
    assert results.find_element(By.LINK_TEXT, site.project)
    _shot(browser, "search")
