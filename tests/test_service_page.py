"""Tests of openface_py.service (the web page).

The web page at `/`, driven in a real headless Chromium (Selenium + the system's chromedriver)
against a real server: upload photos and read the names off the page, enroll and delete a person."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import EXAMPLES, SAMPLE, cli, copy_db
from test_service import KEY, Server

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver; .ci/run installs them)",
)


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(sample_db, tmp_path_factory):
    """A server over a copy of the session's database of photos 1-8 of each sample person."""
    db = copy_db(sample_db[0], tmp_path_factory.mktemp("page"))
    s = Server(db)
    s.db = db
    yield s
    s.stop()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def names_after_upload(driver, photo) -> list[str]:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('names').innerHTML = ''")
    driver.find_element(By.ID, "photo").send_keys(str(photo))
    wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#names li") or d.find_element(By.ID, "identify-error").text
    )
    assert driver.find_element(By.ID, "identify-error").text == ""
    return [li.get_attribute("data-name") for li in driver.find_elements(By.CSS_SELECTOR, "#names li.face")]


def test_page_names_people_enrolls_and_deletes(browser, server):
    from selenium.webdriver.common.by import By

    probe = SAMPLE / "Tony_Blair" / "Tony_Blair_0009.jpg"
    group = EXAMPLES / "longoria-cooper.jpg"
    want = {
        r["path"]: [f["name"] for f in r["faces"]]
        for r in json.loads(cli("db", "search", str(server.db), str(probe), str(group), "--json")[1])["results"]
    }
    assert want[str(probe)] == ["Tony_Blair"] and want[str(group)] == ["unknown", "unknown"]
    browser.get(server.url + "/")
    wait(browser, lambda d: "81 faces" in d.find_element(By.ID, "status").text)
    assert names_after_upload(browser, probe) == want[str(probe)]
    assert names_after_upload(browser, group) == want[str(group)]
    canvas = browser.find_element(By.ID, "canvas")
    assert int(canvas.get_attribute("width")) > 0  # the photo was drawn, with its boxes

    # enroll without the key: the page shows the server's refusal
    browser.find_element(By.ID, "enroll-name").send_keys("Amy Adams")
    browser.find_element(By.ID, "enroll-photos").send_keys(str(EXAMPLES / "adams.jpg"))
    browser.find_element(By.ID, "enroll").click()
    wait(browser, lambda d: "401" in d.find_element(By.ID, "enroll-result").text)
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "enroll").click()
    wait(browser, lambda d: "1 face(s) added" in d.find_element(By.ID, "enroll-result").text)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'li.person[data-name="Amy Adams"]'))
    assert names_after_upload(browser, EXAMPLES / "adams.jpg") == ["Amy Adams"]

    # delete from the list (after the confirmation dialog)
    person = browser.find_element(By.CSS_SELECTOR, 'li.person[data-name="Amy Adams"]')
    person.find_element(By.TAG_NAME, "button").click()
    wait(browser, lambda d: d.switch_to.alert).accept()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, 'li.person[data-name="Amy Adams"]'))
    assert names_after_upload(browser, EXAMPLES / "adams.jpg") == ["unknown"]
